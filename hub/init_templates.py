"""The text of the files ``hubctl init`` writes: configs with comments, policy, systemd units.

Every option of ``HubConfig`` and ``SpokeConfig`` appears in the generated ``hub.toml`` and
``spoke.toml``: the ones ``hubctl init`` sets as values, the others commented out with their
current default (read from the dataclass, so the defaults shown are the code's) and a line
saying what they do. ``tests/hub/test_cli_init.py`` checks that none is missing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hubspoke.spoke import config as spoke_config

from . import config as hub_config

__all__ = [
    "HUB_OPTIONS",
    "SPOKE_OPTIONS",
    "Unit",
    "hub_toml",
    "hubctl_toml",
    "policy_toml",
    "spoke_toml",
    "systemd_unit",
    "trust_peer",
]

HUB_OPTIONS: Final[Mapping[str, str]] = {
    "name": "This hub's peer name: clients address commands to it, its certificate carries it.",
    "listen": "host:port hubd serves on. With [tls] it may be any address; without, loopback only.",
    "key_file": "The hub's Ed25519 signing key (mode 0600; it never leaves this host).",
    "trust_file": "Every peer and its public keys (clients, this hub, spokes); re-read on change.",
    "policy_file": "Default-deny authorization rules; hubd will not start without them.",
    "rate_per_principal": "Sustained commands per second one principal may send (0: no limit).",
    "rate_burst": "Commands one principal may send at once after being idle.",
    "event_loop": "uvloop (the default where installed) or asyncio: the loop this daemon runs on.",
    "redis_url": "The hub's Redis (all its state; not the spokes' queues), or redis+cluster://node.",
    "redis_username": "A Redis ACL user to log in as (empty: the default user).",
    "redis_password_file": "File with the Redis password on its first line (mode 0600).",
    "redis_tls_ca_file": "rediss:// only: the CA the Redis server's certificate must chain to.",
    "redis_tls_cert_file": "rediss:// only: a client certificate, for tls-auth-clients yes.",
    "redis_tls_key_file": "rediss:// only: that certificate's private key (mode 0600).",
    "spokes": "The spokes this hub relays to: the [[spokes]] tables at the end of this file.",
    "max_skew_s": "How far, in seconds, a client's clock may run ahead of the hub's.",
    "max_validity_s": "Longest expire_time - issue_time span accepted from a client, in seconds.",
    "relay_validity_s": "How long, in seconds, a relay the hub signs stays valid.",
    "spoke_call_timeout_s": "Deadline, in seconds, of each call to a spoke.",
    "kill_grace_s": "Extra deadline, in seconds, for kill calls (the spoke waits for the agent).",
    "probe_timeout_s": "Deadline, in seconds, of each spoke health probe.",
    "probe_interval_s": "How often, in seconds, the hub probes every spoke in the background.",
    "missed_probes_down": "Probes in a row a spoke may miss before it shows DISCONNECTED.",
    "circuit_failures": "Consecutive failures that open a spoke's circuit (calls fail at once).",
    "circuit_open_s": "Seconds an open circuit waits before a probe may close it.",
    "fanout_timeout_s": "One deadline, in seconds, for a list or lookup across spokes.",
    "link_hello_timeout_s": "Connect mode: seconds a spoke's new link stream may take to speak.",
    "link_max_pending_calls": "Connect mode: calls in flight to one spoke; more fail at once.",
    "link_call_buffer": "Connect mode: responses of one call held before the spoke is slowed.",
    "link_missed_heartbeats": "Connect mode: missed heartbeats that end a spoke's session.",
    "link_min_heartbeat_s": "Connect mode: the shortest heartbeat interval accepted, in seconds.",
    "link_max_heartbeat_s": "Connect mode: the longest heartbeat interval accepted, in seconds.",
    "link_lease_ttl_s": "Several hubds: seconds a connect-mode spoke's lease lives unrenewed.",
    "link_lease_poll_s": "Several hubds: seconds between reads of spokes' leases held elsewhere.",
    "link_forward_timeout_s": "Several hubds: seconds to reach a spoke's holder, then UNAVAILABLE.",
    "link_forward_address": "Several hubds: host:port the others forward calls to (empty: listen).",
    "agent_index_ttl_s": "How long, in seconds, the hub remembers which spoke runs an agent.",
    "claim_ttl_s": "Shortest time, in seconds, a selector spawn's id stays claimed for its spoke.",
    "max_watchers": "Concurrent watch streams this hub relays, from all principals.",
    "max_watchers_per_principal": "Concurrent watch streams one principal may hold via this hub.",
    "watch_event_rate": "Events per second one relayed watch may carry (progress coalesced).",
    "watch_event_burst": "Events one relayed watch may carry at once.",
    "watch_event_rate_per_principal": "Events per second one principal's watches may carry here.",
    "watch_event_burst_per_principal": "Events one principal's watches may carry here at once.",
    "redis_timeout_s": "Deadline, in seconds, of each Redis operation.",
    "shutdown_grace_s": "How long, in seconds, in-flight calls may finish on shutdown.",
    "max_message_bytes": "Largest request or response, in bytes.",
    "max_input_bytes": "Longest hubctl send message relayed, in UTF-8 bytes.",
    "outbox_enabled": "Hold spawns/kills for unreachable spokes and deliver them when back.",
    "outbox_max_per_spoke": "Most commands held for one spoke (RESOURCE_EXHAUSTED beyond).",
    "outbox_max_total": "Most commands held for all spokes together.",
    "outbox_default_start_within_s": "Start deadline of a held spawn naming none, in seconds.",
    "outbox_poll_s": "How often, in seconds, held commands are tried.",
    "outbox_retry_base_s": "First delay, in seconds, after a failed delivery (doubled each time).",
    "outbox_retry_max_s": "Longest delay, in seconds, between delivery attempts.",
    "outbox_lease_s": "Seconds one hubd holds a command it delivers before another may.",
    "audit_enabled": "Keep the hash-chained audit log of every call and decision in Redis.",
    "audit_max_entries": "Most audit entries kept; older ones are trimmed (still verifiable).",
    "audit_retention_s": "Audit entries older than this, in seconds, are trimmed.",
    "audit_max_bytes_kept": "Signed bytes over this are kept in the audit log as size + SHA-256.",
    "audit_unverified_per_s": "Audit entries per second for calls refused before verification.",
    "audit_checkpoint_file": "Signed checkpoints of the audit chain, outside Redis (audit verify).",
    "audit_checkpoint_interval_s": "Seconds between audit checkpoints (when the chain moved).",
    "enrol_token_ttl_s": "Longest an enrolment token (hubctl spoke enroll) stays usable, in s.",
    "enrol_listen": 'With [tls]: host:port of the enrolment listener (no client cert); "": none.',
    "enrol_address": 'host:port enrolment tokens tell spokes to dial; "": the listener\'s own.',
    "enrol_ca_key_file": "With [tls]: the CA key that signs enrolled spokes' certificates (0600).",
    "enrol_cert_days": "Days an enrolled spoke's TLS certificate is valid.",
    "enrol_rate": "EnrolService calls per second one address may make (0: no limit).",
    "enrol_burst": "EnrolService calls one address may make at once.",
    "log_level": "debug, info, warning, error or critical (JSON lines on stderr).",
    "metrics_listen": 'host:port of a Prometheus /metrics endpoint; "" serves none.',
    "tls": "Transport TLS: the [tls] table below.",
}
"""What each hub option does, one line each (shown above the option in hub.toml)."""

SPOKE_OPTIONS: Final[Mapping[str, str]] = {
    "name": "This spoke's peer name: commands are addressed to it, its certificate carries it.",
    "listen": "host:port spoked serves on (the hub dials it). Without [tls], loopback only.",
    "link": "dial (the hub dials listen) or connect (this spoke dials hub_address; no socket).",
    "hub_address": "Connect mode: host:port of the hub to dial (plaintext: loopback only).",
    "hub_name": "Connect mode: the hub's peer name (its certificate must carry it).",
    "hub_tls_server_name": "Connect mode: another name the hub's certificate carries.",
    "heartbeat_interval_s": "Connect mode: seconds between this spoke's signed heartbeats.",
    "link_reconnect_min_s": "Connect mode: first wait, in seconds, before dialling the hub again.",
    "link_reconnect_max_s": "Connect mode: longest wait, in seconds, between two dials.",
    "key_file": "The spoke's Ed25519 signing key (mode 0600): it signs every reply.",
    "trust_file": "Trusted peers: hubs that may relay here and clients whose commands may run.",
    "policy_file": "Default-deny authorization rules this spoke enforces for itself.",
    "labels": "This spoke's labels, matched by policy rules' spoke_labels (the labels table).",
    "rate_per_principal": "Sustained commands per second one principal may send (0: no limit).",
    "rate_burst": "Commands one principal may send at once after being idle.",
    "event_loop": "uvloop (the default where installed) or asyncio: the loop this daemon runs on.",
    "redis_url": "This site's Redis (the queue); it must run with maxmemory-policy noeviction.",
    "redis_username": "A Redis ACL user to log in as (empty: the default user).",
    "redis_password_file": "File with the Redis password on its first line (mode 0600).",
    "redis_tls_ca_file": "rediss:// only: the CA the Redis server's certificate must chain to.",
    "redis_tls_cert_file": "rediss:// only: a client certificate, for tls-auth-clients yes.",
    "redis_tls_key_file": "rediss:// only: that certificate's private key (mode 0600).",
    "profiles": "The programs agents may run: the [profiles.*] tables below. Nothing else runs.",
    "concurrency": "Agents this process runs at once; more wait in the queue.",
    "max_queue_depth": "Agents waiting beyond this are refused with RESOURCE_EXHAUSTED.",
    "max_queued_per_principal": "Agents one principal may have waiting here (its quota).",
    "max_delay_s": "Longest start delay, in seconds, a spawn may ask for.",
    "default_start_within_s": "A spawn's start deadline, in seconds after its acceptance.",
    "max_start_within_s": "Longest start_within, in seconds, a spawn may ask for.",
    "max_relay_age_s": "Oldest hub acceptance time, in seconds, a relayed command may carry.",
    "max_task_bytes": "Largest task text accepted, in UTF-8 bytes.",
    "max_labels": "Most labels a spawn may carry.",
    "output_tail_bytes": "Bytes of stdout and of stderr kept per agent (the last ones).",
    "default_priority": "Priority of a spawn that names none (1 least urgent ... 10 most).",
    "retention_s": "How long, in seconds, a finished agent (and its command id) stays known.",
    "replay_within_s": "How long, in seconds, after its spawn a dead letter may be replayed.",
    "verification_grace_s": "Seconds a NEEDS_VERIFICATION agent waits for hubctl verify.",
    "approval_window_s": "Seconds a spawn held for approvals waits (unless its rule says).",
    "max_awaiting_per_principal": "Agents one principal may have waiting for approvals here.",
    "max_receipt_bytes": "Largest final JSON receipt kept, in bytes; a longer one is an error.",
    "max_input_bytes": "Longest hubctl send message kept, in UTF-8 bytes.",
    "max_inputs_per_agent": "Most hubctl send messages kept per agent (with their signatures).",
    "inbox_dir": "Directory of the agents' inboxes (empty: one under the system temp dir).",
    "max_skew_s": "How far, in seconds, a sender's clock may run ahead of ours.",
    "max_validity_s": "Longest expire - issue span accepted, in seconds.",
    "lock_duration_ms": "Queue job lock in ms; renewed while the agent runs.",
    "stalled_interval_ms": "How often, in ms, workers look for jobs a crashed worker held.",
    "max_message_bytes": "Largest gRPC message accepted or sent, in bytes.",
    "retry_backoff_ms": "Base of the exponential retry backoff, in ms.",
    "sweep_interval_s": "How often, in seconds, finished agents past retention are forgotten.",
    "start_up_scan_batch": "Records the start-up scan (orphaned jobs) reads per step.",
    "start_up_scan_pause_ms": "Pause between steps of the start-up scan, in ms (0: none).",
    "start_handoff_ms": "How long a just-stored spawn waits in memory for this spoked's worker "
    "(ms; 0: the worker always reads Redis).",
    "start_handoff_max": "Just-stored spawns held in memory for this spoked's worker.",
    "max_watchers": "Concurrent watch streams this process serves.",
    "max_watchers_per_principal": "Concurrent watch streams one principal may hold here.",
    "watch_event_rate": "Events per second one watch may carry (progress coalesced).",
    "watch_event_burst": "Events one watch may carry at once (catching up on stored events).",
    "watch_event_rate_per_principal": "Events per second one principal's watches may carry here.",
    "watch_event_burst_per_principal": "Events one principal's watches may carry here at once.",
    "watch_heartbeat_s": "Seconds between heartbeats on an idle watch stream.",
    "feed_maxlen": "State changes the event feed (hubctl events) keeps; older are trimmed.",
    "hooks": "Notification hooks: [[hooks]] tables (name, on, program, args); operations.md.",
    "hook_timeout_s": "How long, in seconds, one run of a hook program may take.",
    "hook_retries": "How many times a failed hook run is tried again.",
    "hook_backoff_s": "Seconds before a hook's first retry; doubled for each further one.",
    "kill_wait_s": "How long, in seconds, a kill waits for the agent's final state.",
    "supervise": "Run each agent under its own supervisor, so a spoked restart loses none.",
    "agent_state_dir": "Supervised agents' output and exit files; keep it across restarts.",
    "leave_agents_on_shutdown": "SIGTERM leaves supervised agents running (the next re-attaches).",
    "shutdown_grace_s": "How long, in seconds, calls and agents may finish on shutdown.",
    "allow_eviction": "Start even if Redis may evict keys (risks losing queued agents).",
    "log_level": "debug, info, warning, error or critical (JSON lines on stderr).",
    "metrics_listen": 'host:port of a Prometheus /metrics endpoint; "" serves none.',
    "metrics_refresh_s": "How often, in seconds, the queue-depth gauges are read from Redis.",
    "mode": "Run mode of every profile: live, synthetic or shadow (a profile: only stricter).",
    "tls": "Transport TLS: the [tls] table below.",
}
"""What each spoke option does, one line each (shown above the option in spoke.toml)."""

_TABLES: Final = frozenset({"spokes", "tls", "profiles", "labels"})
"""Options written as tables, not as ``key = value`` lines."""


def _s(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Path):
        return _s(str(value))
    if value == ():  # an empty array of tables (hooks)
        return "[]"
    return _s(str(value))


def _default(f: dataclasses.Field[object]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _options(
    fields: Iterable[dataclasses.Field[object]], docs: Mapping[str, str], set_: Mapping[str, str]
) -> str:
    """One commented ``key = value`` per scalar option: set ones live, the rest commented."""
    lines: list[str] = []
    for f in fields:
        doc = docs.get(f.name, "(see the config module)")
        if f.name in _TABLES:
            continue
        lines.append(f"# {doc}")
        if f.name in set_:
            lines.append(f"{f.name} = {set_[f.name]}")
        else:
            default = _default(f)
            shown = '""' if default is None else _value(default)
            lines.append(f"# {f.name} = {shown}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _tls(name: str) -> str:
    return (
        "# Transport TLS. Certificates come from the federation's CA (`hubctl init`);\n"
        "# peers check each other's certificate against ca_file, and a certificate must carry\n"
        "# the peer's name. Private keys are mode 0600.\n"
        "[tls]\n"
        f"cert_file = {_s(f'tls/{name}.crt')}\n"
        f"key_file = {_s(f'tls/{name}.tls.key')}\n"
        'ca_file = "tls/ca.crt"\n'
        "# Refuse clients without a certificate from the CA (the default).\n"
        "require_client_cert = true\n"
    )


def hub_toml(name: str, listen: str, redis_url: str) -> str:
    """``hub.toml``: every option explained; ``[[spokes]]`` appended by ``add-spoke``."""
    head = (
        "# hubd's configuration, written by `hubctl init hub` (docs/deploy.md).\n"
        "# Relative paths resolve against this file's directory. Every option also has an\n"
        "# environment variable HUB_<OPTION> (HUB_LISTEN, ...); flags win over the environment,\n"
        "# which wins over this file. Commented options show their default.\n\n"
    )
    set_ = {
        "name": _s(name),
        "listen": _s(listen),
        "key_file": _s(f"keys/{name}.key"),
        "trust_file": _s("trust.toml"),
        "policy_file": _s("policy.toml"),
        "redis_url": _s(redis_url),
        "audit_checkpoint_file": _s("audit-checkpoints.jsonl"),
    }
    tail = (
        "\n# The spokes this hub relays to. `hubctl init add-spoke` appends one table per spoke:\n"
        "#   [[spokes]]\n"
        '#   name = "build-2"                 # its peer name (and its certificate\'s)\n'
        '#   address = "build-host:7101"      # host:port the hub dials\n'
        '#   labels = { gpu = "no" }           # shown by `hubctl spokes`, used by policy\n'
        '#   tls_server_name = "build-2"      # optional: the name its certificate carries\n'
    )
    fields = dataclasses.fields(hub_config.HubConfig)
    return head + _options(fields, HUB_OPTIONS, set_) + _tls(name) + tail


def spoke_entry(name: str, address: str, labels: Mapping[str, str]) -> str:
    """One ``[[spokes]]`` table for ``hub.toml``."""
    shown = ", ".join(f"{_s(k)} = {_s(v)}" for k, v in labels.items())
    return f"\n[[spokes]]\nname = {_s(name)}\naddress = {_s(address)}\nlabels = {{ {shown} }}\n"


def spoke_toml(
    name: str, listen: str, redis_url: str, labels: Mapping[str, str], data_dir: Path
) -> str:
    """``spoke.toml``: every option explained, the synthetic profile, an example profile."""
    head = (
        "# spoked's configuration, written by `hubctl init spoke` (docs/deploy.md).\n"
        "# Relative paths resolve against this file's directory. Every scalar option also has\n"
        "# an environment variable SPOKE_<OPTION> (SPOKE_LISTEN, ...); flags win over the\n"
        "# environment, which wins over this file. Commented options show their default.\n\n"
    )
    set_ = {
        "name": _s(name),
        "listen": _s(listen),
        "key_file": _s(f"keys/{name}.key"),
        "trust_file": _s("trust.toml"),
        "policy_file": _s("policy.toml"),
        "redis_url": _s(redis_url),
        # Not under /tmp: PrivateTmp's directory goes when the unit stops (docs/deploy.md).
        "agent_state_dir": _s(str(data_dir / "agents")),
    }
    shown = ", ".join(f"{_s(k)} = {_s(v)}" for k, v in labels.items())
    profiles = (
        "\n# What agents may run. A spoke runs only the profiles named here; an agent runs as\n"
        "# spoked's user, inside spoked's systemd sandbox, under a supervisor of its own\n"
        "# that outlives a spoked restart (docs/reliability.md).\n"
        "# The built-in fake agent, for checks (`hubctl spawn ... -- duration=1`):\n"
        "[profiles.synthetic]\n\n"
        "# An example of a real profile (argv is run directly, never through a shell;\n"
        "# `{task}` is replaced by the task text, which must match task_pattern in full):\n"
        "# [profiles.tests]\n"
        '# argv = ["python", "-m", "pytest", "-q", "{task}"]\n'
        "# task_pattern = 'tests/[A-Za-z0-9_/]+\\.py(::[A-Za-z0-9_]+)*'\n"
        f"# cwd = {_s(str(data_dir / 'checkout'))}\n"
        "# task_on_stdin = false\n"
        "# timeout_seconds = 1800\n"
        "# kill_grace_seconds = 5\n\n"
    )
    fields = dataclasses.fields(spoke_config.SpokeConfig)
    return (
        head
        + _options(fields, SPOKE_OPTIONS, set_)
        + f"# {SPOKE_OPTIONS['labels']}\nlabels = {{ {shown} }}\n"
        + profiles
        + _tls(name)
    )


def hubctl_toml(hub_address: str, hub_name: str, principal: str) -> str:
    """``hubctl.toml`` for an operator whose files sit beside the hub's."""
    return (
        "# hubctl's configuration for the operator, written by `hubctl init hub`.\n"
        "# Use it with `hubctl --config THIS_FILE ...` or HUBCTL_CONFIG=THIS_FILE.\n"
        "# Relative paths resolve against this file's directory.\n\n"
        "# Where the hub listens (HUBCTL_HUB or --hub override it).\n"
        f"hub = {_s(hub_address)}\n"
        "# The hub's peer name: commands are addressed to it; its certificate must carry it.\n"
        f"hub_name = {_s(hub_name)}\n"
        "# The client principal hubctl signs as; policy.toml says what it may do.\n"
        f"principal = {_s(principal)}\n"
        f"key_file = {_s(f'keys/{principal}.key')}\n"
        "# Who the hub and the spokes are: hubctl verifies every reply against it.\n"
        'trust_file = "trust.toml"\n\n'
        "[tls]\n"
        'ca_file = "tls/ca.crt"\n'
        f"cert_file = {_s(f'tls/{principal}.crt')}\n"
        f"key_file = {_s(f'tls/{principal}.tls.key')}\n"
    )


def trust_peer(name: str, role: str, public_key: str, comment: str = "") -> str:
    """One ``[[peer]]`` table of a trust store."""
    note = f"# {comment}\n" if comment else ""
    return f"\n{note}[[peer]]\nname = {_s(name)}\nrole = {_s(role)}\nkeys = [{_s(public_key)}]\n"


def trust_head() -> str:
    return (
        "# The federation's trust store, written by `hubctl init hub`: every peer, its role\n"
        "# (hub, spoke, client) and its Ed25519 public keys. hubd, spoked and hubctl all read\n"
        "# it and re-read it when it changes. `hubctl init add-spoke` appends spokes;\n"
        "# `hubctl keys rotate|revoke` append keys and revocations (shared/trust.py).\n"
    )


def policy_toml(operator: str | None) -> str:
    """A default-deny policy: one rule for the operator, or that rule commented out."""
    head = (
        "# Authorization, written by `hubctl init hub`. Default-deny: a command no rule allows\n"
        "# is refused with PERMISSION_DENIED naming the closest rule. hubd and every spoke\n"
        "# enforce their own copy. Format: shared/policy.py; verbs: spawn, get, kill, list,\n"
        "# watch, replay, spokes, queue_stats, dead_letters, pause, resume, drain, or the\n"
        '# groups read, operate, admin, or *. Every rule has a scope: "own" (the agents the\n'
        '# principal spawned) or "any" (every agent; pause, resume and drain need it).\n\n'
    )
    who = operator or "alice"
    rule = (
        f"# The operator {who} may do everything, on every spoke, with every profile.\n"
        "[[rule]]\n"
        f"name = {_s(f'{who}-all')}\n"
        f"principals = [{_s(who)}]\n"
        'verbs = ["*"]\n'
        'scope = "any"             # or "own": only the agents this principal spawned\n'
        'spokes = ["*"]            # or names, or spoke_labels = { pool = "ci" }\n'
        'profiles = ["*"]          # spawn only: profile names\n'
        "# max_priority = 10       # spawn limits\n"
        "# max_runtime_seconds = 3600\n"
        "# max_attempts = 3\n"
    )
    if operator is not None:
        return head + rule
    return head + "".join(f"# {line}\n" if line else "#\n" for line in rule.splitlines())


@dataclass(frozen=True, slots=True)
class Unit:
    """What a systemd unit for one daemon needs."""

    description: str
    exec_start: Sequence[str]
    """The argv, absolute paths."""
    read_write: Sequence[Path]
    """The only paths the service may write (ProtectSystem=strict makes the rest read-only)."""
    note: str = ""
    """Extra comment lines (without ``#``) placed in [Service]."""
    kill_mode: str = ""
    """``KillMode=`` (after the note, which says why); empty: systemd's default."""


def systemd_unit(unit: Unit) -> str:
    """A hardened ``Type=simple`` unit that restarts the daemon when it fails."""
    note = "".join(f"# {line}\n" if line else "#\n" for line in unit.note.splitlines())
    rw = " ".join(str(p) for p in unit.read_write)
    # StateDirectory= creates a /var/lib/... directory owned by User= before the start.
    state = "".join(
        f"StateDirectory={p.relative_to('/var/lib')}\n"
        for p in unit.read_write
        if p.is_relative_to("/var/lib") and p != Path("/var/lib")
    )
    return (
        "# Written by `hubctl init` (docs/deploy.md). Install with:\n"
        "#   cp THIS_FILE /etc/systemd/system/ && systemctl daemon-reload\n"
        "#   systemctl enable --now THIS_UNIT\n"
        "[Unit]\n"
        f"Description={unit.description}\n"
        "After=network-online.target redis-server.service\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(unit.exec_start)}\n"
        "Restart=on-failure\n"
        "RestartSec=2s\n"
        "# A dedicated user (create it: useradd --system --no-create-home hubspoke). It must\n"
        "# own the key files (mode 0600); keep tls/ca.key readable by root only.\n"
        "User=hubspoke\n"
        "Group=hubspoke\n"
        + note
        + (f"KillMode={unit.kill_mode}\n" if unit.kill_mode else "")
        + "# Hardening: the daemon may write only ReadWritePaths.\n"
        + state
        + "NoNewPrivileges=yes\n"
        "ProtectSystem=strict\n"
        "ProtectHome=read-only\n"
        f"ReadWritePaths={rw}\n"
        "PrivateTmp=yes\n"
        "PrivateDevices=yes\n"
        "ProtectKernelTunables=yes\n"
        "ProtectKernelModules=yes\n"
        "ProtectControlGroups=yes\n"
        "RestrictSUIDSGID=yes\n"
        "LockPersonality=yes\n"
        "UMask=0077\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )
