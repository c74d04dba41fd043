"""The ``federation`` arm group (issue 10): one real hubd with many connect-mode spokes.

A hubd (TLS, its config listing N connect-mode spokes labelled ``bench=fed``, each spoke
with its own Ed25519 key in the trust store and its own TLS client certificate from one CA)
and K simulator processes (:mod:`benchlib.sim_spokes`), each running N/K real
:class:`~hubspoke.spoke.link.HubLink` sessions heartbeating every ``heartbeat_s``. Beside
it, a second hubd with a 1-spoke federation (one more link in the first simulator), for the
selector-spawn comparison in the same run.

Measured, in order:

1. the hubd's RSS and CPU with 0 sessions (``baseline_s`` after it started);
2. the simulators started; wait until every session is open, then assert N distinct
   ESTABLISHED TCP connections between the hubd's port and the simulators (/proc) and
   every spoke READY in ``hubctl --json spokes``;
3. after ``settle_s``, the idle window (``window_s``, heartbeats only): hub CPU as % of one
   core (utime + stime from /proc/<pid>/stat over wall time), RSS at its end; memory per
   spoke = (RSS with N sessions - RSS with 0) / N;
4. fan-out list (``Client.list()`` over every spoke), ``fanout_calls`` calls one after
   another: p50/p99, each call checked to carry N pages and no unreachable spoke;
5. selector spawn (``Client.spawn(selector={"bench": "fed"})``), ``spawns`` per federation,
   the big and the 1-spoke one alternating: p50/p99 of each and their ratio.

Targets (issue 10): memory <= 120 KB per spoke, heartbeats <= 15 % of one core, fan-out p99
<= 2 s; the floor (bare grpc.aio streams, one signature check per heartbeat, TLS) is about
83 KB and 12 %.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from hubspoke import testing

from . import environment, stats
from .federation_floor import run_floor
from .federation_net import hub_links
from .procs import cpu_seconds, machine_busy_seconds, rss_bytes

SIM = Path(__file__).resolve().parent / "sim_spokes.py"
SELECTOR = {"bench": "fed"}
PROFILE = "synthetic"
NOWHERE = "127.0.0.1:9"
"""The listen address the generated spoke configs name: nothing dials a connect-mode spoke."""
TARGETS = {"kb_per_spoke": 120.0, "cpu_pct": 15.0, "fanout_p99_ms": 2000.0}
FLOORS = {"kb_per_spoke": 83.0, "cpu_pct": 12.0}


@dataclass(frozen=True, slots=True)
class FedSizes:
    """How big the federation is and how long each phase lasts."""

    spokes: int = 1000
    processes: int = 4
    heartbeat_s: float = 5.0
    baseline_s: float = 10.0
    settle_s: float = 15.0
    window_s: float = 60.0
    floor_window_s: float = 30.0
    fanout_calls: int = 50
    spawns: int = 50
    connect_timeout_s: float = 180.0


FULL_FED = FedSizes()
QUICK_FED = FedSizes(
    spokes=50,
    processes=1,
    heartbeat_s=1.0,
    baseline_s=1.0,
    settle_s=1.0,
    window_s=3.0,
    floor_window_s=1.0,
    fanout_calls=5,
    spawns=5,
    connect_timeout_s=60.0,
)


def spoke_names(n: int) -> list[str]:
    return [f"sim-{i:04d}" for i in range(n)]


def connect_hub_config(path: Path, names: Sequence[str]) -> None:
    """Rewrite the generated hub.toml: every spoke in connect mode with the bench's label,
    and a per-principal rate the bench's sequential calls never reach."""
    text = path.read_text()
    head = text.split("\n[[spokes]]", 1)[0].rstrip("\n") + "\n"
    tls = text[text.index("\n[tls]") :]
    labels = ", ".join(f'{k} = "{v}"' for k, v in SELECTOR.items())
    spokes = "".join(
        f'\n[[spokes]]\nname = "{n}"\nlink = "connect"\nlabels = {{ {labels} }}\n' for n in names
    )
    path.write_text(head + "rate_per_principal = 10000.0\nrate_burst = 10000\n" + spokes + tls)


def link_spec(fed: testing.Federation, name: str) -> dict[str, str]:
    """One simulated spoke's files and its hub, for sim_spokes.py."""
    files = fed.files
    if files.tls_dir is None:
        raise RuntimeError("the federation bench runs over TLS")
    return {
        "spoke": name,
        "hub_address": fed.hub_address,
        "hub_name": fed.hub_name,
        "key_file": str(files.keys_dir / f"{name}.key"),
        "cert_file": str(files.tls_dir / f"{name}.crt"),
        "tls_key_file": str(files.tls_dir / f"{name}.tls.key"),
        "ca_file": str(files.tls_dir / "ca.crt"),
    }


class Simulators:
    """The K simulator processes, each in its own session (stopped with SIGTERM)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[asyncio.subprocess.Process] = []
        self._logs: list[IO[bytes]] = []

    async def start(
        self,
        specs: Sequence[Sequence[dict[str, str]]],
        heartbeat_s: float,
        mode: str = "hublink",
    ) -> None:
        """One simulator per spec; ``mode``: ``hublink`` or ``floor`` (sim_spokes.py)."""
        for i, links in enumerate(specs):
            spec = self.root / f"{mode}-{i}.json"
            doc = {"heartbeat_interval_s": heartbeat_s, "mode": mode, "links": links}
            spec.write_text(json.dumps(doc))
            log = (self.root / f"{mode}-{i}.log").open("wb")
            self._logs.append(log)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SIM),
                str(spec),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
            self.procs.append(proc)

    async def ready(self, counts: Sequence[int], timeout_s: float) -> None:
        """Until every simulator says all its sessions are open."""

        async def one(proc: asyncio.subprocess.Process, n: int) -> None:
            assert proc.stdout is not None
            while True:
                line = (await proc.stdout.readline()).decode().strip()
                if not line:
                    raise RuntimeError(f"a simulator exited (status {await proc.wait()})")
                if line == f"ready {n}":
                    return

        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(one(p, n) for p, n in zip(self.procs, counts, strict=True)))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def stop(self) -> dict[str, int]:
        """Stop every simulator; what they say they did: links, sessions opened (more than
        links: reconnects), heartbeats sent, and times some link was down after all were up."""
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        totals = {"links": 0, "sessions": 0, "heartbeats": 0, "lost_reports": 0}
        for proc in self.procs:
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 15)
            except TimeoutError:
                proc.kill()
                out, _ = await proc.communicate()
            for line in out.decode().splitlines():
                if line.startswith("lost "):
                    totals["lost_reports"] += 1
                elif line.startswith("final "):
                    for pair in line.split()[1:]:
                        key, value = pair.split("=")
                        totals[key] += int(value)
        for log in self._logs:
            log.close()
        return totals


def _say(text: str) -> None:
    print(f"bench: federation: {text}", file=sys.stderr, flush=True)


async def _cpu_window(pid: int, seconds: float, sims: Sequence[int] = ()) -> dict[str, float]:
    """The hub's CPU (% of one core) over ``seconds``, its RSS at the end, the simulators'
    CPU and the share of the machine other work used meanwhile."""
    meter = CpuMeter(pid, sims)
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    peak = rss_bytes(pid)
    end = t0 + seconds
    while (left := end - time.perf_counter()) > 0:
        await asyncio.sleep(min(left, 1.0))
        peak = max(peak, rss_bytes(pid))
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    used = meter.done(1)
    return {
        "cpu_pct": (c1 - c0) / (t1 - t0) * 100,
        "simulators_cpu_pct": used["simulators_cpu_s_per_op"] / (t1 - t0) * 100,
        "foreign_cpu_share": used["foreign_cpu_share"],
        "wall_s": t1 - t0,
        "rss_bytes": rss_bytes(pid),
        "rss_peak_bytes": peak,
    }


class CpuMeter:
    """CPU seconds of the hubd, the simulators, this process (the client) and the machine's
    other work, over a phase."""

    def __init__(self, hub: int, sims: Sequence[int]) -> None:
        self._roles = {"hub": [hub], "simulators": list(sims), "client": [os.getpid()]}
        self._t0 = time.perf_counter()
        self._c0 = self._sample()
        self._busy0 = machine_busy_seconds()

    def _sample(self) -> dict[str, float]:
        return {r: sum(cpu_seconds(p) for p in pids) for r, pids in self._roles.items()}

    def done(self, ops: int) -> dict[str, float]:
        """CPU seconds per op of each role, and the share of the machine's CPU other work
        used meanwhile (a noisy phase shows there)."""
        wall = time.perf_counter() - self._t0
        c1 = self._sample()
        used = {r: c1[r] - self._c0[r] for r in c1}
        foreign = machine_busy_seconds() - self._busy0 - sum(used.values())
        out = {f"{r}_cpu_s_per_op": v / ops for r, v in used.items()}
        out["foreign_cpu_share"] = max(foreign, 0.0) / (wall * (os.cpu_count() or 1))
        return out


async def _timed(op: Callable[[], Awaitable[None]], n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        await op()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await op()
        out.append(time.perf_counter() - t0)
    return out


async def _all_ready(fed: testing.Federation, names: Sequence[str]) -> dict[str, int]:
    """``hubctl --json spokes`` of the hub: how many spokes it shows in each health."""
    run = await fed.hubctl("--json", "spokes", timeout_s=120)
    if run.code != 0:
        raise RuntimeError(f"hubctl spokes failed: {run.stderr.strip()}")
    rows = {r["name"]: r for r in run.doc()["spokes"]}
    health: dict[str, int] = {}
    for name in names:
        state = str(rows.get(name, {}).get("health", "MISSING"))
        health[state] = health.get(state, 0) + 1
    return health


async def _wait_ready(fed: testing.Federation, names: Sequence[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (health := await _all_ready(fed, names)) != {"READY": len(names)}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every spoke READY in hubctl spokes: {health}")
        await asyncio.sleep(1.0)


async def _fanout(fed: testing.Federation, n_spokes: int, calls: int) -> dict[str, Any]:
    """``calls`` fan-out lists; a call without every spoke's page counts as incomplete, with
    the reasons the hub signed for the spokes it did not reach."""
    async with fed.client(timeout_s=60) as client:
        incomplete = 0
        unreached: dict[str, int] = {}
        counting = False

        async def op() -> None:
            nonlocal incomplete
            listed = await client.list()
            if not counting:
                return
            if len(listed.pages) != n_spokes or listed.unreachable_spokes:
                incomplete += 1
            for spoke in listed.unreachable_spokes:
                why = listed.unreachable_reasons.get(spoke, "") or "unsaid"
                unreached[why] = unreached.get(why, 0) + 1

        for _ in range(2):  # warm-up, not counted
            await op()
        counting = True
        lat = await _timed(op, calls, warmup=0)
    return {
        "latency": stats.latency_summary(lat),
        "calls": calls,
        "incomplete_calls": incomplete,
        "unreached": unreached,
        "unreached_per_call": sum(unreached.values()) / calls,
    }


async def _spawns(
    big: testing.Federation, solo: testing.Federation, n: int
) -> dict[str, dict[str, Any]]:
    lat: dict[str, list[float]] = {"big": [], "solo": []}
    placed: dict[str, set[str]] = {"big": set(), "solo": set()}
    async with big.client(timeout_s=30) as cb, solo.client(timeout_s=30) as cs:
        clients = {"big": cb, "solo": cs}
        for i in range(n + 2):
            for which, client in clients.items():
                t0 = time.perf_counter()
                agent = await client.spawn("", PROFILE, f"bench {i}", selector=SELECTOR)
                took = time.perf_counter() - t0
                if i >= 2:  # the first two warm up
                    lat[which].append(took)
                    placed[which].add(agent.spoke)
    return {
        k: {"latency": stats.latency_summary(v), "spawns": n, "spokes_used": len(placed[k])}
        for k, v in lat.items()
    }


def _judge(result: dict[str, Any]) -> dict[str, Any]:
    got = {
        "kb_per_spoke": result["memory"]["kb_per_spoke"],
        "cpu_pct": result["idle"]["cpu_pct"],
        "fanout_p99_ms": result["fanout"]["latency"]["p99_ms"],
    }
    here = {"kb_per_spoke": result["floor"]["kb_per_spoke"], "cpu_pct": result["floor"]["cpu_pct"]}
    return {
        k: {
            "value": got[k],
            "target": t,
            "floor": FLOORS.get(k),
            "floor_here": here.get(k),
            "met": got[k] <= t,
        }
        for k, t in TARGETS.items()
    }


async def _start(root: Path, names: Sequence[str], feds: list[testing.Federation]) -> None:
    """Two hub Redis servers, the N-spoke hubd and the 1-spoke hubd (both TLS), appended to
    ``feds`` as they start (the caller stops them)."""
    redis_dir = root / "redis"
    redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for label, spokes in (("big", list(names)), ("solo", ["solo-0001"])):
        server = testing.EmbeddedRedis(redis_dir / label, password_file=redis_dir / "password")
        await server.start()
        fed = testing.Federation(
            root / label,
            spokes,
            redis_url=server.access,
            addresses={n: NOWHERE for n in spokes},
            tls=True,
            ready_timeout_s=120,
        )
        fed.redis[f"hub-redis-{label}"] = server  # stopped with the federation
        feds.append(fed)
        t0 = time.perf_counter()
        files = await fed.prepare()
        if label == "big":
            _say(f"{len(spokes)} keys and TLS certificates in {time.perf_counter() - t0:.1f} s")
        connect_hub_config(files.hub_config, spokes)
        await fed.start(spokeds=False)


async def run_federation(sizes: FedSizes, out_dir: Path) -> dict[str, Any]:
    """Run the whole federation arm once; returns the JSON-ready result."""
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="hsf-"))
    names = spoke_names(sizes.spokes)
    feds: list[testing.Federation] = []
    sims = Simulators(out_dir)
    result: dict[str, Any] = {"sizes": asdict(sizes)}
    try:
        await _start(root, names, feds)
        big, solo = feds
        pid = big.hub.pid
        _say(f"hubd up (pid {pid}); {sizes.baseline_s:g} s with 0 sessions")
        await asyncio.sleep(sizes.baseline_s / 2)
        base = await _cpu_window(pid, sizes.baseline_s / 2)
        chunks = [list(names[i :: sizes.processes]) for i in range(sizes.processes)]
        specs = [[link_spec(big, n) for n in chunk] for chunk in chunks]
        _say(f"the floor: bare TLS streams, {sizes.floor_window_s:g} s window")
        floor = await run_floor(
            big, specs, lambda: Simulators(out_dir), _cpu_window, sizes, out_dir
        )
        _say(f"floor: {floor['cpu_pct']:.1f} % of one core, {floor['kb_per_spoke']:.1f} KB/spoke")
        specs[0].append(link_spec(solo, "solo-0001"))
        t0 = time.perf_counter()
        await sims.start(specs, sizes.heartbeat_s)
        await sims.ready([len(s) for s in specs], sizes.connect_timeout_s)
        connect_s = time.perf_counter() - t0
        _say(f"{sizes.spokes} sessions open in {connect_s:.1f} s")
        await _wait_ready(big, names, 60)
        await _wait_ready(solo, ["solo-0001"], 30)
        port = int(big.hub_address.rsplit(":", 1)[1])
        links = hub_links(pid, port, sims.pids)
        if links != sizes.spokes:
            raise RuntimeError(f"{links} distinct TCP connections at the hub, not {sizes.spokes}")
        _say(f"{links} distinct connections, every spoke READY; settling {sizes.settle_s:g} s")
        await asyncio.sleep(sizes.settle_s)
        idle = await _cpu_window(pid, sizes.window_s, sims.pids)
        mib = idle["rss_bytes"] / 2**20
        _say(f"idle: hub {idle['cpu_pct']:.1f} % of one core, RSS {mib:.0f} MiB")
        meter = CpuMeter(pid, sims.pids)
        fan = await _fanout(big, sizes.spokes, sizes.fanout_calls)
        fan["cpu"] = meter.done(sizes.fanout_calls + 2)
        _say(f"fan-out list p50 {fan['latency']['p50_ms']:.0f} ms")
        meter = CpuMeter(pid, sims.pids)
        spawn = await _spawns(big, solo, sizes.spawns)
        spawn_cpu = meter.done(2 * (sizes.spawns + 2))
        after = hub_links(pid, port, sims.pids)
        sessions = await sims.stop()
        result |= {
            "connect_s": connect_s,
            "connections": {"at_start": links, "at_end": after},
            "ready": sizes.spokes,
            "baseline": base,
            "idle": idle,
            "memory": {
                "rss_0_bytes": base["rss_bytes"],
                "rss_n_bytes": idle["rss_bytes"],
                "kb_per_spoke": (idle["rss_bytes"] - base["rss_bytes"]) / sizes.spokes / 1024,
            },
            "heartbeats_per_s": sizes.spokes / sizes.heartbeat_s,
            # All the hub's CPU at idle over the heartbeats: what each costs, at most.
            "cpu_us_per_heartbeat": idle["cpu_pct"]
            / 100
            / (sizes.spokes / sizes.heartbeat_s)
            * 1e6,
            "floor": floor,
            "fanout": fan,
            "selector_spawn": spawn,
            "selector_spawn_cpu": spawn_cpu,
            "sessions": sessions,
            "selector_spawn_ratio_p50": spawn["big"]["latency"]["p50_ms"]
            / spawn["solo"]["latency"]["p50_ms"],
        }
        result["targets"] = _judge(result)
    finally:
        await sims.stop()
        for fed in feds:
            await fed.stop()
        shutil.rmtree(root, ignore_errors=True)
    result["environment"] = environment.describe()
    result["elapsed_s"] = time.perf_counter() - started
    return result
