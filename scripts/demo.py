"""A guided tour of Hubspoke on this machine, driven through the ``hubctl`` CLI.

Starts ``hubctl dev up`` (a hub and two spokes, each with a private redis-server) in a
temporary directory, spawns synthetic agents on both spokes and follows them to
SUCCEEDED, shows their receipts, kills a long-running agent, and stops the federation.
Exit 0 if every step worked, 1 otherwise; the federation is always stopped.

Run it with ``scripts/demo`` (which prepares .venv first) or ``.venv/bin/python scripts/demo.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

SPOKES: Final = ("spoke-1", "spoke-2")
SHORT_TASK: Final = "duration=3 steps=6"
LONG_TASK: Final = "duration=60 spawn_child"
READY_TIMEOUT_S: Final = 30.0
CALL_TIMEOUT_S: Final = 20.0
RUN_TIMEOUT_S: Final = 30.0
STATE_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 20.0
POLL_S: Final = 0.5
FINAL_STATES: Final = frozenset({"SUCCEEDED", "FAILED", "KILLED", "TIMED_OUT", "DEAD_LETTERED"})
_T0: Final = time.monotonic()


class DemoError(Exception):
    """A step failed; the message says which and why."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, total: int, text: str) -> None:
    say(f"\n[{number}/{total}] {text}")


def detail(text: str) -> None:
    say(f"      {text}")


def _tool(name: str, module: str) -> list[str]:
    """The console script next to this interpreter, else ``python -m module``."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", module]


HUBCTL: Final = _tool("hubctl", "hubspoke.hub.cli")


class DevFederation:
    """``hubctl dev up`` as a child process: wait for ``ready``, stop with SIGINT."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stderr_path = root / "dev-up.stderr"
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, spokes: int) -> None:
        argv = [*HUBCTL, "dev", "up", "--dir", str(self.root), "--spokes", str(spokes)]
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise DemoError(
                    f"'hubctl dev up' did not print 'ready' within {READY_TIMEOUT_S:g} s"
                ) from None
            if line is None:
                raise DemoError(f"'hubctl dev up' exited with status {self.process.wait()}")
            if line.strip() == "ready":
                return

    def _read_stdout(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stop(self) -> int | None:
        """SIGINT, as Ctrl-C would; SIGKILL if it does not exit in time. Its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise DemoError(
                    f"'hubctl dev up' did not stop within {STOP_TIMEOUT_S:g} s of SIGINT"
                ) from None
        return self.process.returncode

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Hubctl:
    """Runs ``hubctl --json VERB ...`` with HUBCTL_CONFIG pointing at the dev federation."""

    def __init__(self, config: Path) -> None:
        self.env = {**os.environ, "HUBCTL_CONFIG": str(config)}

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*HUBCTL, "--json", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    @staticmethod
    def result(proc: subprocess.Popen[str], args: Sequence[str]) -> dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=CALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise DemoError(f"'hubctl {shlex.join(args)}' took over {CALL_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            raise DemoError(
                f"'hubctl {shlex.join(args)}' exited with {proc.returncode}: {err.strip()}"
            )
        doc: dict[str, Any] = json.loads(out)
        return doc

    def __call__(self, *args: str) -> dict[str, Any]:
        return self.result(self.start(*args), args)

    def status_all(self, agent_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``hubctl status`` for several agents at once (one process each, in parallel)."""
        procs = [(self.start("status", a), ("status", a)) for a in agent_ids]
        return [self.result(p, args) for p, args in procs]


def _short(agent: dict[str, Any]) -> str:
    return str(agent["agent_id"])[:8]


def _progress(agent: dict[str, Any]) -> str:
    percent = int(agent.get("progress_percent", 0))
    return "  -" if percent < 0 else f"{percent:3d}%"


def _line(agent: dict[str, Any]) -> str:
    return f"{_short(agent)} {agent['spoke']} {agent['state']:<9} {_progress(agent)}"


def _elapsed() -> str:
    return f"{time.monotonic() - _T0:5.1f}s"


def wait_states(
    hubctl: Hubctl, agent_ids: Sequence[str], wanted: frozenset[str], timeout_s: float
) -> list[dict[str, Any]]:
    """Poll ``hubctl status`` until every agent is in ``wanted``; one line per poll."""
    deadline = time.monotonic() + timeout_s
    while True:
        agents = hubctl.status_all(agent_ids)
        detail(f"{_elapsed()}  " + "  |  ".join(_line(a) for a in agents))
        if all(a["state"] in wanted for a in agents):
            return agents
        stuck = [a for a in agents if a["state"] in FINAL_STATES - wanted]
        if stuck:
            a = stuck[0]
            raise DemoError(
                f"agent {a['agent_id']} ended {a['state']} ({a.get('reason', '')}); "
                f"stderr: {a.get('stderr_tail', '').strip()!r}"
            )
        if time.monotonic() > deadline:
            raise DemoError(f"agents not {'/'.join(sorted(wanted))} within {timeout_s:g} s")
        time.sleep(POLL_S)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, waiting to be reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _child_pid(agent: dict[str, Any]) -> int | None:
    for line in str(agent.get("stdout_tail", "")).splitlines():
        word, _, pid = line.partition(" ")
        if word == "CHILD" and pid.strip().isdigit():
            return int(pid)
    return None


def kill_long_agent(hubctl: Hubctl) -> None:
    detail(f"$ hubctl spawn --spoke {SPOKES[0]} -- {LONG_TASK}")
    long_agent = hubctl("spawn", "--spoke", SPOKES[0], "--", *LONG_TASK.split())
    long_id = str(long_agent["agent_id"])
    wait_states(hubctl, [long_id], frozenset({"RUNNING"}), STATE_TIMEOUT_S)
    detail(f"$ hubctl kill {long_id}")
    killed_at = time.monotonic()
    hubctl("kill", long_id)
    killed = wait_states(hubctl, [long_id], frozenset({"KILLED"}), STATE_TIMEOUT_S)[0]
    detail(f"KILLED {time.monotonic() - killed_at:.1f} s after 'hubctl kill'")
    child = _child_pid(killed)
    if child is None:
        return
    deadline = time.monotonic() + 5.0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(child):
        raise DemoError(f"the killed agent's child process {child} is still running")
    detail(f"its child process (pid {child}, from spawn_child) is gone too")


def stop_federation(dev: DevFederation) -> None:
    code = dev.stop()
    if code != 0:
        raise DemoError(f"'hubctl dev up' exited with {code} on SIGINT")
    detail("hubd, both spoked and their redis-servers have stopped; exit code 0")


def run_demo(root: Path) -> None:
    total = 7
    dev = DevFederation(root)
    say("Hubspoke demo: a hub and two spokes on this machine, driven with the hubctl CLI.")
    say(f"State directory (deleted at the end): {root}")
    try:
        step(1, total, "Start a local federation")
        detail(f"$ hubctl dev up --dir {root} --spokes {len(SPOKES)}")
        detail("a private redis-server per peer, then hubd and one spoked per spoke, on 127.0.0.1")
        started = time.monotonic()
        dev.start(len(SPOKES))
        detail(f"ready after {time.monotonic() - started:.1f} s; server logs in {root / 'logs'}")
        hubctl = Hubctl(root / "hubctl.toml")
        detail(f"hubctl finds the hub through HUBCTL_CONFIG={root / 'hubctl.toml'}")

        step(2, total, "Ask the hub for its spokes")
        detail("$ hubctl spokes")
        for s in hubctl("spokes")["spokes"]:
            detail(f"{s['name']:<8} {s['address']:<21} {s['health']}")

        step(3, total, f"Spawn a synthetic agent on each spoke (task: {SHORT_TASK})")
        ids = []
        for spoke in SPOKES:
            detail(f"$ hubctl spawn --spoke {spoke} -- {SHORT_TASK}")
            agent = hubctl("spawn", "--spoke", spoke, "--", *SHORT_TASK.split())
            detail(f"  agent {agent['agent_id']} {agent['state']}")
            ids.append(str(agent["agent_id"]))

        step(4, total, "Follow them until both have SUCCEEDED")
        detail(f"$ hubctl status AGENT_ID   (every {POLL_S:g} s, for each agent)")
        done = wait_states(hubctl, ids, frozenset({"SUCCEEDED"}), RUN_TIMEOUT_S)

        step(5, total, "Read their structured results (the JSON receipt each agent printed last)")
        for agent in done:
            receipt = agent.get("receipt", {})
            checks = ", ".join(
                f"{v.get('name')}={v.get('status')}" for v in receipt.get("verifications", [])
            )
            detail(
                f"{_short(agent)} on {agent['spoke']}: exit code {agent['exit_code']}, "
                f"receipt {receipt.get('status')!r}: {receipt.get('summary', '')} "
                f"[checks: {checks or 'none'}]"
            )
            detail(f"  receipt JSON: {receipt.get('json', '')}")

        step(6, total, f"Spawn a long agent ({LONG_TASK}), then kill it")
        kill_long_agent(hubctl)

        step(7, total, "Stop the federation (SIGINT to 'hubctl dev up', as Ctrl-C would)")
        stop_federation(dev)
    except BaseException:
        with contextlib.suppress(DemoError):
            dev.stop()
        tail = dev.stderr_tail()
        if tail:
            say("\nLast lines from 'hubctl dev up':")
            say("\n".join(f"  {line}" for line in tail.splitlines()))
        raise


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="hubspoke-demo-"))
    try:
        run_demo(root)
    except DemoError as exc:
        say(f"\nDemo FAILED: {exc}")
        say(f"Logs kept in {root} (logs/*.log, dev-up.stderr).")
        return 1
    except KeyboardInterrupt:
        say("\nDemo interrupted; the federation was stopped.")
        shutil.rmtree(root, ignore_errors=True)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    say(f"\nDemo finished in {time.monotonic() - _T0:.1f} s.")
    say("Next: README.md, 'Quick tour', to run your own federation with 'hubctl dev up'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
