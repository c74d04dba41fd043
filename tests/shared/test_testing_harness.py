"""hubspoke.testing: its public names, and a Daemon and a Federation of real processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hubspoke import testing

# A stand-in server: prints a line, then ``serving <port>``, then idles until signalled.
_FAKE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('warming up', flush=True)\n"
    "print(f'serving {sys.argv[1]}', flush=True)\n"
    "print('after ready', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def test_public_names_are_pinned() -> None:
    assert sorted(testing.__all__) == [
        "AppendFsync",
        "DEFAULT_PROFILES",
        "Daemon",
        "DaemonError",
        "ENV_VAR",
        "EmbeddedRedis",
        "EmbeddedRedisCluster",
        "Federation",
        "FederationPlan",
        "HOST",
        "HarnessError",
        "HubctlRun",
        "InProcessFederation",
        "LoopThread",
        "RedisServerError",
        "RedisServerTls",
        "TLS_ENV_VAR",
        "connect_env",
        "find_redis_cli",
        "find_redis_server",
        "find_tls_redis_server",
        "pick_free_port",
        "redis_server_argv",
        "run_hubctl",
        "server_argv",
        "server_env",
        "until",
    ]
    for name in testing.__all__:
        assert getattr(testing, name) is not None
    with pytest.raises(AttributeError):
        _ = testing.nothing_here


def test_importing_it_loads_no_server_module() -> None:
    """``hubctl dev`` imports the harness; only InProcessFederation needs the servers."""
    code = (
        "import sys, hubspoke.testing; "
        "print([m for m in sys.modules "
        "if m == 'hubspoke.hub.app' or m.startswith('hubspoke.spoke')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_server_env_drops_the_servers_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_LISTEN", "0.0.0.0:1")
    monkeypatch.setenv("SPOKE_REDIS_URL", "redis://elsewhere/0")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere/0")
    env = testing.server_env({"SPOKE_CONCURRENCY": "2"})
    assert not {"HUB_LISTEN", "SPOKE_REDIS_URL", "REDIS_URL"} & set(env)
    assert env["SPOKE_CONCURRENCY"] == "2"
    assert env["PATH"]


async def test_daemon_waits_for_serving_logs_and_restarts(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "fake.log"
    daemon = testing.Daemon("fake", [sys.executable, "-c", _FAKE, "4321"], log)
    try:
        assert await daemon.start() == 4321
        assert daemon.running
        first = daemon.pid
        async with asyncio.timeout(10):  # the line after readiness is copied by the drain
            while "after ready" not in log.read_text():  # noqa: ASYNC110 - a file, no event
                await asyncio.sleep(0.02)
        await daemon.stop(grace_s=5)
        assert daemon.returncode == 0
        assert log.read_text().splitlines() == ["warming up", "after ready"]

        await daemon.start()
        assert daemon.pid != first
        daemon.signal(signal.SIGSTOP)
        await daemon.kill()  # a stopped process still dies at once
        assert daemon.returncode == -signal.SIGKILL
        assert log.read_text().count("warming up") == 2  # a restart appends
    finally:
        await daemon.kill()


async def test_daemon_that_exits_names_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('no config here')"]
    log = tmp_path / "bad.log"
    daemon = testing.Daemon("bad", argv, log)
    with pytest.raises(testing.DaemonError) as info:
        await daemon.start()
    assert str(info.value).startswith(f"bad exited with status 1 at start; see {log}\n")
    assert "  no config here" in str(info.value)


async def test_daemon_that_stays_silent_is_killed(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    daemon = testing.Daemon("mute", argv, tmp_path / "mute.log", ready_timeout_s=0.5)
    with pytest.raises(testing.DaemonError, match=r"mute did not print 'serving <port>' within"):
        await daemon.start()
    assert not daemon.running


async def test_stop_escalates_to_sigkill_and_says_so(tmp_path: Path) -> None:
    stubborn = _FAKE.replace("lambda *_: sys.exit(0)", "signal.SIG_IGN")
    said: list[str] = []
    daemon = testing.Daemon(
        "stubborn", [sys.executable, "-c", stubborn, "1"], tmp_path / "s.log", report=said.append
    )
    await daemon.start()
    await daemon.stop(grace_s=0.3)
    assert daemon.returncode == -signal.SIGKILL
    assert said == ["stubborn ignored SIGTERM for 0.3 s; SIGKILL"]


@pytest.mark.slow
async def test_federation_of_processes_serves_and_stops(tmp_path: Path) -> None:
    """Two spokeds on one site's Redis, and two hubs: one for every site, one for a subset."""
    fed = testing.Federation(tmp_path, ["spoke-1", "spoke-2"], spoke_env={"SPOKE_CONCURRENCY": "1"})
    try:
        await fed.start()
        second = await fed.start_spoked("spoke-1")
        assert second.name == "spoke-1.2"
        assert second.address != fed.address("spoke-1")
        only_two = await fed.start_hub("hub-2", spokes={"spoke-2": fed.address("spoke-2")})
        async with fed.client() as client:
            assert sorted(s.name for s in await client.spokes()) == [
                "spoke-1",
                "spoke-2",
            ]
        async with fed.client(hub=only_two.address) as client:
            assert [s.name for s in await client.spokes()] == ["spoke-2"]
        assert fed.dead() is None
        assert set(fed.pids()) == {
            "hub:hub",
            "hub:hub-2",
            "spoke:spoke-1",
            "spoke:spoke-1.2",
            "spoke:spoke-2",
            "redis:hub",
            "redis:spoke-1",
            "redis:spoke-2",
        }
        await second.kill()
        assert fed.dead() == (
            f"spoke-1.2 exited unexpectedly with status -9; see {tmp_path}/logs/spoke-1.2.log"
        )
    finally:
        await fed.stop()
    assert [d for d in fed.daemons if d.running] == []
    assert [r for r in fed.redis.values() if r.running] == []


async def test_until_returns_the_wait_and_names_what_timed_out() -> None:
    ticks = iter(range(100))

    async def third_time() -> bool:
        return next(ticks) >= 2

    assert await testing.until(third_time, 5, "the third poll", poll_s=0.01) >= 0

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="waiting for the impossible"):
        await testing.until(never, 0.05, "the impossible", poll_s=0.01)
