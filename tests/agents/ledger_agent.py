"""Test agent for the chaos runs: appends to a ledger when each run starts and ends.

The ledger file is named by ``LEDGER`` (set in the profile's ``env``). Each line is one
JSON object written with a single ``write`` on an ``O_APPEND`` descriptor, and kept well
under PIPE_BUF, so concurrent agents never interleave their lines::

    {"ev": "start", "cid": ..., "attempt": 1, "pid": ..., "t": 1700000000.123}
    {"ev": "end", "cid": ..., "attempt": 1, "pid": ..., "t": ..., "start": ..., "how": "ok"}

``how`` is ``ok`` after a normal run, ``term`` when SIGTERM stopped it (the agent then exits
143, as a shell would). A SIGKILLed run leaves no end line. The task text (from
``HUBSPOKE_TASK``) is ``key=value`` words: ``sleep=2.5`` is how long the run lasts, and
``resleep=1`` how long attempts after the first last (default: ``sleep``).
Stdlib only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

_PIPE_BUF = 4096  # Linux's; POSIX guarantees at least 512 and our lines stay near 200 bytes
_started = time.time()


def _options(task: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in task.split() if "=" in word)


def _append(event: str, **extra: object) -> None:
    path = os.environ.get("LEDGER")
    if not path:
        return
    line = {
        "ev": event,
        "cid": os.environ.get("HUBSPOKE_AGENT_ID", ""),
        "attempt": int(os.environ.get("HUBSPOKE_ATTEMPT", "0") or 0),
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    if len(data) >= _PIPE_BUF:
        raise ValueError("ledger line too long to append atomically")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _on_term(signum: int, _frame: object) -> None:
    _append("end", start=_started, how="term")
    os._exit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _on_term)
    opts = _options(os.environ.get("HUBSPOKE_TASK", ""))
    _append("start")
    seconds = opts.get("sleep", "1")
    if int(os.environ.get("HUBSPOKE_ATTEMPT", "1") or 1) > 1:
        seconds = opts.get("resleep", seconds)
    time.sleep(float(seconds))
    # Block SIGTERM while the end line is written: one line per run, never two.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _append("end", start=_started, how="ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
