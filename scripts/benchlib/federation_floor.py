"""The floor of the federation arm, measured in the same run: bare grpc.aio streams over
mutual TLS, one per simulated spoke on its own connection, one Ed25519 check per heartbeat
(benchlib/floor_server.py), with the same keys, certificates, simulators and interval as the
hub's part. Its RSS per stream and CPU are what any Python gRPC server pays for these
spokes; the hub's figures above it are the hub's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from hubspoke import testing

from .federation_net import hub_links
from .procs import rss_bytes

SERVER = Path(__file__).resolve().parent / "floor_server.py"


async def _serve(fed: testing.Federation, out_dir: Path) -> tuple[asyncio.subprocess.Process, int]:
    files = fed.files
    assert files.tls_dir is not None
    spec = out_dir / "floor-server.json"
    spec.write_text(
        json.dumps(
            {
                "trust_file": str(files.trust_file),
                "cert_file": str(files.tls_dir / f"{fed.hub_name}.crt"),
                "key_file": str(files.tls_dir / f"{fed.hub_name}.tls.key"),
                "ca_file": str(files.tls_dir / "ca.crt"),
            }
        )
    )
    log = (out_dir / "floor-server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        str(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
    if line[:1] != ["serving"]:
        raise RuntimeError(f"the floor server did not start; see {out_dir / 'floor-server.log'}")
    return proc, int(line[1])


async def run_floor(
    fed: testing.Federation,
    specs: Sequence[Sequence[dict[str, str]]],
    sims_factory: Callable[[], Any],
    window: Callable[[int, float, Sequence[int]], Coroutine[Any, Any, dict[str, float]]],
    sizes: Any,
    out_dir: Path,
) -> dict[str, Any]:
    """Start the floor server, measure its RSS with 0 streams, start the simulators in
    floor mode against it, check one connection per spoke, then its idle window."""
    n = sum(len(s) for s in specs)
    proc, port = await _serve(fed, out_dir)
    sims = sims_factory()
    try:
        await asyncio.sleep(sizes.baseline_s / 2)
        rss0 = rss_bytes(proc.pid)
        address = f"127.0.0.1:{port}"
        await sims.start(
            [[{**link, "hub_address": address} for link in s] for s in specs],
            sizes.heartbeat_s,
            mode="floor",
        )
        await sims.ready([len(s) for s in specs], sizes.connect_timeout_s)
        links = hub_links(proc.pid, port, sims.pids)
        if links != n:
            raise RuntimeError(f"{links} distinct TCP connections at the floor server, not {n}")
        await asyncio.sleep(sizes.settle_s)
        idle = await window(proc.pid, sizes.floor_window_s, sims.pids)
    finally:
        await sims.stop()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return {
        "connections": links,
        "rss_0_bytes": rss0,
        "idle": idle,
        "kb_per_spoke": (idle["rss_bytes"] - rss0) / n / 1024,
        "cpu_pct": idle["cpu_pct"],
    }
