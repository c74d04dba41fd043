"""One config loader for both daemons: an env var for every scalar field, validation on
construction, secrets redacted in repr and errors; one error root; the same __main__ edge."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubspoke import config as sconfig
from hubspoke import errors, keys, metrics, policy, tls, trust
from hubspoke.hub import config as hub_config
from hubspoke.hub.config import HubConfig, HubConfigError
from hubspoke.spoke import config as spoke_config
from hubspoke.spoke import profiles
from hubspoke.spoke.config import SpokeConfig, SpokeConfigError

OLD_SPOKE_VARS = {
    "SPOKE_NAME",
    "SPOKE_LISTEN",
    "SPOKE_KEY_FILE",
    "SPOKE_TRUST_FILE",
    "SPOKE_POLICY_FILE",
    "SPOKE_RATE_PER_PRINCIPAL",
    "SPOKE_RATE_BURST",
    "SPOKE_REDIS_URL",
    "SPOKE_CONCURRENCY",
    "SPOKE_MAX_QUEUE_DEPTH",
    "SPOKE_MAX_TASK_BYTES",
    "SPOKE_OUTPUT_TAIL_BYTES",
    "SPOKE_RETENTION_S",
    "SPOKE_MAX_SKEW_S",
    "SPOKE_ALLOW_EVICTION",
    "SPOKE_LOG_LEVEL",
    "SPOKE_METRICS_LISTEN",
    "SPOKE_TLS_CERT_FILE",
    "SPOKE_TLS_KEY_FILE",
    "SPOKE_TLS_CA_FILE",
    "SPOKE_TLS_REQUIRE_CLIENT_CERT",
    "REDIS_URL",
}
HUB_BASE = {"HUB_KEY_FILE": "/k", "HUB_TRUST_FILE": "/t"}


def _other_value(default: object) -> tuple[str, object]:
    """Environment text for a value unlike ``default``, and the value it must load as."""
    if isinstance(default, bool):
        return ("0", False) if default else ("yes", True)
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    if isinstance(default, Path) or default is None:
        return "/elsewhere/file", Path("/elsewhere/file")
    return "", None


_STRINGS = {
    "name": "other-name",
    "listen": "127.0.0.1:0",
    "redis_url": "redis://other:6379/3",
    "redis_username": "other-user",
    "log_level": "debug",
    "metrics_listen": "127.0.0.1:0",
    "mode": "shadow",
    "link": "connect",
    "hub_address": "127.0.0.1:7100,127.0.0.1:7200",
    "hub_name": "other-hub",
    "hub_tls_server_name": "hub.example",
    "enrol_listen": "127.0.0.1:0",
    "enrol_address": "hub.example:7443",
    "link_forward_address": "127.0.0.1:7300",
    "event_loop": "asyncio",  # the default is uvloop where it is installed
}


def _needs(prefix: str, name: str) -> dict[str, str]:
    """What else an option needs to be valid: Redis TLS files need a rediss:// URL, a
    client certificate its key, and connect mode the hub's address."""
    if name == "link":
        return {prefix + "HUB_ADDRESS": "127.0.0.1:7100"}
    if not name.startswith("redis_tls_"):
        return {}
    extra = {prefix + "REDIS_URL": "rediss://other:6380/0"}
    if name != "redis_tls_ca_file":
        extra |= {prefix + f"REDIS_TLS_{f}_FILE": "/elsewhere/file" for f in ("CERT", "KEY")}
    return extra


@pytest.mark.parametrize(
    ("cls", "layout", "base"),
    [
        (SpokeConfig, spoke_config._LAYOUT, {}),
        (HubConfig, hub_config._LAYOUT, HUB_BASE),
    ],
    ids=["spoke", "hub"],
)
def test_every_scalar_field_has_an_env_var_named_after_it(
    cls: type, layout: sconfig.Layout, base: dict[str, str]
) -> None:
    scalars = sconfig.scalar_fields(cls)
    defaults = cls.load(None, base)
    for name in scalars:
        var = layout.prefix + name.upper()
        default = getattr(defaults, name)
        text, want = _other_value(default)
        if isinstance(default, str):
            text, want = _STRINGS[name], _STRINGS[name]
        loaded = cls.load(None, {**base, **_needs(layout.prefix, name), var: text})
        assert getattr(loaded, name) == want, var
    names = sconfig.env_names(cls, layout)
    assert {layout.prefix + n.upper() for n in scalars} <= set(names)


def test_spoke_keeps_every_env_var_it_had_and_covers_every_scalar_field() -> None:
    names = set(sconfig.env_names(SpokeConfig, spoke_config._LAYOUT))
    assert names >= OLD_SPOKE_VARS
    non_scalar = {"labels", "profiles", "tls", "hooks"}
    fields = {f.name for f in dataclasses.fields(SpokeConfig)} - non_scalar
    assert fields == set(sconfig.scalar_fields(SpokeConfig))


def test_spoke_env_wins_over_file_and_redis_url_is_the_fallback(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text(
        'name = "s1"\nkey_file = "keys/s1.key"\nredis_url = "redis://file:6379/0"\n'
        'labels = { zone = "a" }\n[profiles.synthetic]\n'
    )
    cfg = SpokeConfig.load(path, {})
    assert cfg.key_file == tmp_path / "keys/s1.key"
    assert cfg.redis_url == "redis://file:6379/0"
    assert dict(cfg.labels) == {"zone": "a"}
    cfg = SpokeConfig.load(path, {"REDIS_URL": "redis://fallback:6379/0", "SPOKE_LABELS": "b=c"})
    assert cfg.redis_url == "redis://fallback:6379/0"
    assert dict(cfg.labels) == {"b": "c"}
    env = {"REDIS_URL": "redis://fallback:6379/0", "SPOKE_REDIS_URL": "redis://winner:6379/0"}
    assert SpokeConfig.load(path, env).redis_url == "redis://winner:6379/0"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": "a/b"}, "name"),
        ({"listen": "7101"}, "host:port"),
        ({"redis_url": "http://x"}, "redis_url"),
        ({"concurrency": 0}, "concurrency must be positive"),
        ({"kill_wait_s": 0.0}, "kill_wait_s must be a positive"),
        ({"default_priority": 11}, "default_priority"),
        ({"log_level": "loud"}, "log_level"),
        ({"event_loop": "tokio"}, "event_loop must be one of asyncio, uvloop"),
        ({"profiles": {}}, "at least one profile"),
        ({"metrics_listen": "nowhere"}, "metrics_listen"),
    ],
)
def test_spoke_config_validates_on_construction(changes: dict[str, object], match: str) -> None:
    with pytest.raises(SpokeConfigError, match=match):
        SpokeConfig(**changes)  # type: ignore[arg-type]  # values of the right types
    with pytest.raises(SpokeConfigError, match=match):
        SpokeConfig().replace(**changes)
    with pytest.raises(SpokeConfigError, match=match):
        dataclasses.replace(SpokeConfig(), **changes)  # type: ignore[arg-type]  # as above


def test_unknown_options_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text("colour = 1\n")
    with pytest.raises(SpokeConfigError, match="unknown option 'colour'"):
        SpokeConfig.load(path, {})
    with pytest.raises(SpokeConfigError, match="no_such_option"):
        SpokeConfig().replace(no_such_option=1)


def test_secrets_are_redacted_in_repr_and_errors() -> None:
    url = "redis://user:hunter2@127.0.0.1:6379/0"
    for cfg in (SpokeConfig(redis_url=url), HubConfig.load(None, {**HUB_BASE, "REDIS_URL": url})):
        assert "hunter2" not in repr(cfg)
        assert "redis://user:***@127.0.0.1:6379/0" in repr(cfg)
    for error in (SpokeConfigError, HubConfigError):
        assert str(error(f"cannot reach Redis at {url}: refused")) == (
            "cannot reach Redis at redis://user:***@127.0.0.1:6379/0: refused"
        )
    assert sconfig.redact("redis://h:6379/0 and unix:///tmp/r.sock") == (
        "redis://h:6379/0 and unix:///tmp/r.sock"
    )


def test_every_config_error_is_a_config_error_under_the_root() -> None:
    for cls in (
        keys.KeyFileError,
        trust.TrustConfigError,
        policy.PolicyConfigError,
        tls.TlsError,
        metrics.MetricsConfigError,
        HubConfigError,
        SpokeConfigError,
        profiles.ProfileConfigError,
    ):
        assert issubclass(cls, errors.ConfigError), cls
        assert issubclass(cls, errors.HubspokeError), cls
        assert not issubclass(cls, ValueError), cls
    assert issubclass(errors.CommandError, errors.HubspokeError)


def _run(module: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("module", ["hubspoke.hub", "hubspoke.spoke"])
def test_a_bad_config_is_one_line_and_exit_2_from_both_daemons(module: str, tmp_path: Path) -> None:
    prefix = "HUB_" if module.endswith("hub") else "SPOKE_"
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    for args, env, want in [
        (["--config", str(bad)], {}, "not valid TOML"),
        (["--config", str(tmp_path / "absent.toml")], {}, "config file not found"),
        ([], {**HUB_BASE, f"{prefix}MAX_SKEW_S": "soon"}, f"{prefix}MAX_SKEW_S must be a number"),
        ([], {**HUB_BASE, f"{prefix}KEY_FILE": str(tmp_path / "none.key")}, "not found"),
        ([], {**HUB_BASE, f"{prefix}EVENT_LOOP": "tokio"}, "event_loop must be one of"),
    ]:
        done = _run(module, args, env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("Error: "), done.stderr
        assert want in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stdout == ""


def test_spoked_names_an_unreachable_redis_without_its_password(tmp_path: Path) -> None:
    key = keys.generate("spoke-1")
    keys.write_keypair(key, tmp_path / "keys")
    (tmp_path / "trust.toml").write_text(
        f'[[peer]]\nname = "spoke-1"\nrole = "spoke"\nkeys = ["{keys.encode_public(key.public)}"]\n'
    )
    (tmp_path / "policy.toml").write_text(policy.ALLOW_OPERATOR_EVERYTHING)
    env = {
        "SPOKE_NAME": "spoke-1",
        "SPOKE_LISTEN": "127.0.0.1:0",
        "SPOKE_KEY_FILE": str(tmp_path / "keys" / "spoke-1.key"),
        "SPOKE_TRUST_FILE": str(tmp_path / "trust.toml"),
        "SPOKE_POLICY_FILE": str(tmp_path / "policy.toml"),
        "SPOKE_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",
        "SPOKE_LOG_LEVEL": "critical",
    }
    done = _run("hubspoke.spoke", [], env)
    assert done.returncode == 2, done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert "redis://:***@127.0.0.1:1/0" in done.stderr


def test_both_apps_have_the_same_lifecycle() -> None:
    from hubspoke.hub.app import HubApp
    from hubspoke.spoke.app import SpokeApp

    for name in ("start", "run", "request_stop", "shutdown", "__aenter__", "__aexit__"):
        hub_sig = inspect.signature(getattr(HubApp, name))
        spoke_sig = inspect.signature(getattr(SpokeApp, name))
        assert list(hub_sig.parameters) == list(spoke_sig.parameters), name
        assert [p.default for p in hub_sig.parameters.values()] == [
            p.default for p in spoke_sig.parameters.values()
        ], name
