"""A second real hub and spoke in this process for the classes between principals (issue 9):
several client identities of limited policy beside the operator, one profile of each task
placement kind, low watch caps and a per-principal quota.

It is the harness's :class:`hubspoke.testing.InProcessFederation` again, on its own private
redis-server, with the fuzz client's channels and the observations the classes need (agent
records, open watch streams). It offers what :class:`fuzzlib.runner.Runner` uses
(``channel``, ``agent_count``), so probes go through the same runner as the other classes.

Principals (the hub and the spoke enforce the same policy file):

* ``operator``: everything, ``scope = "any"``;
* ``alice`` and ``bob``: everything on their own agents (``own``), the safe profiles only:
  queue-wide verbs (pause, resume, drain) need ``any`` and are refused;
* ``mallory``: spawns ``synthetic`` and reads her own agents (the quota flood).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc
import redis.asyncio as aioredis

from hubspoke import keys
from hubspoke.hub.config import HubConfig
from hubspoke.hub.federation_files import OPERATOR
from hubspoke.spoke.config import SpokeConfig
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.stream_caps import StreamCaps
from hubspoke.testing import EmbeddedRedis, InProcessFederation
from hubspoke.trust import TrustStore

from .federation import BURST, CLIENT_MAX_BYTES, RATE, Keys

HUB: Final = "hub"
SPOKE: Final = "spoke-1"
ALICE: Final = "alice"
BOB: Final = "bob"
MALLORY: Final = "mallory"
CLIENTS: Final = (ALICE, BOB, MALLORY)

QUOTA: Final = 100
"""``max_queued_per_principal`` of the spoke: waiting agents per principal."""
MAX_DELAY_S: Final = 7_200.0
SPOKE_WATCHERS: Final = 24
SPOKE_WATCHERS_PER_PRINCIPAL: Final = 16
HUB_WATCHERS: Final = 20
HUB_WATCHERS_PER_PRINCIPAL: Final = 12
"""Below the spoke's: through the hub, the hub's caps refuse first."""

POLICY: Final = f"""
[[rule]]
name = "operator-all"
principals = ["{OPERATOR}"]
verbs = ["*"]
scope = "any"
spokes = ["*"]
profiles = ["*"]

[[rule]]
name = "teams-own"
principals = ["{ALICE}", "{BOB}"]
verbs = ["*"]
scope = "own"
spokes = ["*"]
profiles = ["synthetic", "dashdash", "pattern", "stdin", "option"]

[[rule]]
name = "mallory-spawns-synthetic"
principals = ["{MALLORY}"]
verbs = ["spawn", "read"]
scope = "own"
spokes = ["*"]
profiles = ["synthetic"]
"""

PY: Final = sys.executable
# Each checker exits 0 only if the task reached it where its profile puts it, and prints it.
CHECK_DASHDASH: Final = (
    "import sys; a = sys.argv[1:]; print(a[-1]); sys.exit(0 if len(a) == 2 and a[0] == '--' else 3)"
)
CHECK_POSITIONAL: Final = (
    "import sys; a = sys.argv[1:]; print(a[-1]); "
    "sys.exit(0 if len(a) == 1 and not a[0].startswith('-') else 3)"
)
CHECK_STDIN: Final = (
    "import sys; t = sys.stdin.read(); print(t); sys.exit(0 if len(sys.argv) == 1 else 3)"
)
CHECK_OPTION: Final = (
    "import sys; a = sys.argv[1:]; print(a[-1][7:]); "
    "sys.exit(0 if len(a) == 1 and a[0].startswith('--task=') else 3)"
)
TOUCH: Final = "import sys; open(sys.argv[-1], 'w').close()"
OPTION_PATTERN: Final = "[-a-z0-9=_./]+"
"""Every kind's pattern lets a task start with ``-``: where ``{task}`` is exposed, the spoke
must refuse an option-like task whatever the pattern says (``spoke/profiles.py``)."""


def _argv(*items: str) -> str:
    import json

    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


PROFILES: Final = f"""
[profiles.synthetic]

[profiles.dashdash]
argv = {_argv(PY, "-I", "-S", "-c", CHECK_DASHDASH, "--", "{task}")}
task_on_stdin = false

[profiles.pattern]
argv = {_argv(PY, "-I", "-S", "-c", CHECK_POSITIONAL, "{task}")}
task_on_stdin = false
task_pattern = "{OPTION_PATTERN}"

[profiles.stdin]
argv = {_argv(PY, "-I", "-S", "-c", CHECK_STDIN)}
task_on_stdin = true
task_pattern = "{OPTION_PATTERN}"

[profiles.option]
argv = {_argv(PY, "-I", "-S", "-c", CHECK_OPTION, "--task={task}")}
task_on_stdin = false
task_pattern = "{OPTION_PATTERN}"

[profiles.touch]
argv = {_argv(PY, "-I", "-S", "-c", TOUCH, "--", "{task}")}
task_on_stdin = false
"""
"""One profile per task placement kind (after the profile's ``--``; exposed, validated by
``task_pattern``; on stdin; inside ``--task={{task}}``), and ``touch`` (creates the file its
task names: the tampering class's witness that something ran), which only the operator may
spawn."""


def _hub_config(config: HubConfig) -> HubConfig:
    return config.replace(
        rate_per_principal=RATE,
        rate_burst=BURST,
        log_level="warning",
        max_watchers=HUB_WATCHERS,
        max_watchers_per_principal=HUB_WATCHERS_PER_PRINCIPAL,
    )


def _spoke_config(config: SpokeConfig) -> SpokeConfig:
    return dataclasses.replace(
        config,
        rate_per_principal=RATE,
        rate_burst=BURST,
        max_queued_per_principal=QUOTA,
        max_delay_s=MAX_DELAY_S,
        max_watchers=SPOKE_WATCHERS,
        max_watchers_per_principal=SPOKE_WATCHERS_PER_PRINCIPAL,
        concurrency=4,
        stalled_interval_ms=1000,
        lock_duration_ms=4000,
        kill_wait_s=5.0,
        log_level="warning",
    )


@dataclass
class Tenants:
    root: Path
    harness: InProcessFederation
    keys: Keys
    principals: dict[str, keys.SigningKey]
    redis: aioredis.Redis
    _embedded: EmbeddedRedis
    hub_channel: grpc.aio.Channel | None = None
    spoke_channel: grpc.aio.Channel | None = None
    teardown_timeouts: list[str] = field(default_factory=list)

    @property
    def trust(self) -> TrustStore:
        return self.harness.trust

    @property
    def witness_dir(self) -> Path:
        """Where the ``touch`` profile's agents may leave files."""
        return self.root / "witness"

    def channel(self, server: str) -> grpc.aio.Channel:
        ch = self.hub_channel if server == "hub" else self.spoke_channel
        if ch is None:
            raise RuntimeError("federation is not started")
        return ch

    async def agent_count(self) -> int:
        n = 0
        async for _ in self.redis.scan_iter(
            match=SpokeKeys(SPOKE).agent("*"), count=1000, _type="HASH"
        ):
            n += 1
        return n

    async def record(self, agent_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(SpokeKeys(SPOKE).agent(agent_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def state(self, agent_id: str) -> str:
        raw = await self.redis.hget(SpokeKeys(SPOKE).agent(agent_id), "state")
        return raw.decode() if isinstance(raw, bytes) else ""

    async def wait_states(
        self, want: dict[str, frozenset[str]], within_s: float = 60
    ) -> dict[str, str]:
        """Poll until every agent is in one of its states; return the last states seen."""
        deadline = time.monotonic() + within_s
        while True:
            states = {a: await self.state(a) for a in want}
            if all(states[a] in s for a, s in want.items()) or time.monotonic() > deadline:
                return states
            await asyncio.sleep(0.1)

    @staticmethod
    def open_watch_streams() -> int:
        """Watch streams the hub and spoke of this process count as open (their caps)."""
        gc.collect()
        return sum(
            c.open for c in gc.get_objects() if isinstance(c, StreamCaps) and c.what == "watch"
        )

    async def until_no_watch(self, within_s: float = 20) -> int:
        """Wait until no watch stream is counted open; return how many still are."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if not self.open_watch_streams():
                return 0
            await asyncio.sleep(0.05)
        return self.open_watch_streams()

    async def close(self) -> None:
        steps = [
            *(ch.close(None) for ch in (self.hub_channel, self.spoke_channel) if ch is not None),
        ]
        for i, step in enumerate(steps):
            try:
                await asyncio.wait_for(step, timeout=60)
            except TimeoutError:
                self.teardown_timeouts.append(f"tenants-channel-{i}")
        await self.harness.stop()
        self.teardown_timeouts += [f"tenants-{t}" for t in self.harness.teardown_timeouts]
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        await self._embedded.stop()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _layout(root: Path) -> Path:
    """The directories, and the policy (write_federation keeps an existing policy file)."""
    fed_root = root / "federation"
    fed_root.mkdir(parents=True, exist_ok=True)
    (fed_root / "policy.toml").write_text(POLICY)
    (root / "witness").mkdir(exist_ok=True)
    return fed_root


async def start(root: Path) -> Tenants:
    """Write keys, the principals, policy and configs into ``root``; start Redis, the spoke
    and the hub."""
    fed_root = _layout(root)
    embedded = EmbeddedRedis(root / "redis")
    await embedded.start()
    harness = InProcessFederation(
        fed_root,
        [SPOKE],
        hub_name=HUB,
        spoke_profiles=PROFILES,
        redis_url=embedded.url,
        configure_hub=_hub_config,
        configure_spoke=_spoke_config,
        spoke_grace_s=2.0,
    )
    try:
        files = await harness.prepare()
        principals: dict[str, keys.SigningKey] = {}
        with files.trust_file.open("a") as fh:
            for name in CLIENTS:
                key = keys.generate(name)
                keys.write_keypair(key, files.keys_dir)
                principals[name] = key
                fh.write(
                    f'\n[[peer]]\nname = "{name}"\nrole = "client"\n'
                    f'keys = ["{keys.encode_public(key.public)}"]\n'
                )
        principals[OPERATOR] = harness.key(OPERATOR)
        t = Tenants(
            root=root,
            harness=harness,
            keys=Keys(
                operator=harness.key(OPERATOR),
                hub=harness.key(HUB),
                spoke=harness.key(SPOKE),
                intruder=keys.generate("intruder"),
            ),
            principals=principals,
            redis=aioredis.Redis.from_url(embedded.url),
            _embedded=embedded,
        )
        await harness.start()
        opts = [
            ("grpc.max_send_message_length", CLIENT_MAX_BYTES),
            ("grpc.max_receive_message_length", CLIENT_MAX_BYTES),
            ("grpc.enable_retries", 0),
        ]
        t.hub_channel = grpc.aio.insecure_channel(harness.hub_address, options=opts)
        t.spoke_channel = grpc.aio.insecure_channel(harness.address(SPOKE), options=opts)
        for ch in (t.hub_channel, t.spoke_channel):
            await asyncio.wait_for(ch.channel_ready(), timeout=10)
    except BaseException:
        with contextlib.suppress(Exception):
            await harness.stop()
        with contextlib.suppress(Exception):
            await embedded.stop()
        raise
    return t
