"""The machine and the versions a run measured, for the report."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from hubspoke.testing import find_redis_server

REPO = Path(__file__).resolve().parents[2]
_PACKAGES = ("grpcio", "protobuf", "cryptography", "redis", "bullmq", "celery", "matplotlib")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _redis_version() -> str:
    line = _run([find_redis_server(), "--version"])
    found = re.search(r"v=(\S+)", line)
    return found.group(1) if found else line


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, object]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "affinity_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": _redis_version(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "git_commit": _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty": _run(["git", "-C", str(REPO), "status", "--porcelain"]) not in ("", "unknown"),
    }
