"""Test agent: for each variable named in argv, print its SHA-256 (never the value itself).

One line per variable, ``SECRET <NAME> <sha256 hex>``, or ``SECRET <NAME> unset``.
"""

from __future__ import annotations

import hashlib
import os
import sys

for name in sys.argv[1:]:
    value = os.environ.get(name)
    digest = "unset" if value is None else hashlib.sha256(value.encode()).hexdigest()
    print(f"SECRET {name} {digest}", flush=True)
