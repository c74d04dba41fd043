"""Test agent: ignores SIGTERM, prints READY, then sleeps until SIGKILLed."""

from __future__ import annotations

import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("READY", flush=True)
sys.stdout.flush()
time.sleep(3600)
