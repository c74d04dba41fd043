"""Memory per agent supervisor (issue 13), from /proc: see scripts/supervisor_rss."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from hubspoke.spoke import supervisor
from hubspoke.spoke.profiles import Profile
from hubspoke.spoke.supervisor_cgroup import CgroupSupport

FIELDS = ("VmRSS", "RssAnon", "RssFile", "Pss", "Private_Dirty")


def memory(pid: int) -> dict[str, int]:
    """kB of each of FIELDS for ``pid`` (/proc/<pid>/status and smaps_rollup)."""
    found: dict[str, int] = {}
    for name in (f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"):
        with open(name) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in FIELDS and value.split():
                    found[key] = int(value.split()[0])
    return found


async def measure(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        profile = Profile(name="rss", argv=("sleep", "60"), task_on_stdin=False)
        agents = [
            await supervisor.start_supervised(
                profile,
                task="",
                agent_id=f"rss{i}",
                attempt=1,
                root=Path(tmp),
                cgroups=CgroupSupport(None),
            )
            for i in range(count)
        ]
        python = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(60)"
        )
        try:
            await asyncio.sleep(1.0)
            rows = [memory(a.supervisor.pid) for a in agents]
            interpreter = memory(python.pid)
        finally:
            python.kill()
            await python.wait()
            for agent in agents:
                await agent.terminate(0.5)
        print(f"shell: {supervisor.shell()}; {count} supervisors; kB (median)")
        print(f"{'':16}{'supervisor':>12}{'python':>12}")
        for key in FIELDS:
            median = statistics.median(r.get(key, 0) for r in rows)
            print(f"{key:16}{median:12.0f}{interpreter.get(key, 0):12d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=50)
    asyncio.run(measure(parser.parse_args().agents))


if __name__ == "__main__":
    main()
