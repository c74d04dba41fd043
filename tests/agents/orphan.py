"""Test agent: starts a grandchild `sleep` in its own process group, prints
`CHILD <pid>` and exits at once, leaving the grandchild holding stdout open.
With `--escape` the grandchild starts its own session (it leaves the group)."""

from __future__ import annotations

import subprocess
import sys

child = subprocess.Popen(
    ["sleep", "60"],
    start_new_session="--escape" in sys.argv,
)
print(f"CHILD {child.pid}", flush=True)
