"""Test agent: writes argv[1] bytes (default 50 MB) to stdout as fast as it can."""

from __future__ import annotations

import sys

total = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000_000
block = (b"0123456789abcdef" * 4096)[:65536]
out = sys.stdout.buffer
while total > 0:
    chunk = block[: min(total, len(block))]
    out.write(chunk)
    total -= len(chunk)
out.write(b"\nEND\n")
out.flush()
