"""HubConfig and the hubctl config: file, env, flags, validation; the generated federation files."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from hubspoke import client as hc
from hubspoke import hub, keys
from hubspoke.hub import federation_files
from hubspoke.hub.config import HubConfig, HubConfigError, SpokeEntry
from hubspoke.trust import Role, TrustStore

FULL = """\
name = "hub-a"
listen = "0.0.0.0:7100"
key_file = "keys/hub.key"
trust_file = "/etc/hubspoke/trust.toml"
redis_url = "redis://:s3cret@127.0.0.1:6379/2"
spoke_call_timeout_s = 3
agent_index_ttl_s = 60.5
[[spokes]]
name = "spoke-1"
address = "127.0.0.1:7101"
labels = { gpu = "no" }
[[spokes]]
name = "spoke-2"
address = "10.0.0.2:7101"
"""


def write(tmp_path: Path, text: str, name: str = "hub.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_is_read_and_relative_paths_resolve_against_it(tmp_path: Path) -> None:
    cfg = HubConfig.load(write(tmp_path, FULL), {})
    assert cfg.name == "hub-a"
    assert cfg.listen == "0.0.0.0:7100"
    assert cfg.key_file == tmp_path / "keys/hub.key"
    assert cfg.trust_file == Path("/etc/hubspoke/trust.toml")
    assert cfg.spoke_call_timeout_s == 3.0
    assert cfg.agent_index_ttl_s == 60.5
    assert cfg.spokes == (
        SpokeEntry("spoke-1", "127.0.0.1:7101", {"gpu": "no"}),
        SpokeEntry("spoke-2", "10.0.0.2:7101", {}),
    )
    assert cfg.spoke("spoke-2") is not None
    assert cfg.spoke("nope") is None
    # Defaults the file left alone.
    assert cfg.max_skew_s == 30
    assert cfg.max_validity_s == 3600
    assert cfg.relay_validity_s == 60
    assert cfg.max_message_bytes == 4 * 1024 * 1024
    assert cfg.log_level == "info"


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        "HUB_NAME": "hub-b",
        "HUB_LISTEN": "127.0.0.1:0",
        "HUB_KEY_FILE": "rel/hub.key",
        "HUB_TRUST_FILE": "/t.toml",
        "REDIS_URL": "redis://fallback:6379/0",
        "HUB_REDIS_URL": "redis://winner:6379/0",
        "HUB_LOG_LEVEL": "DEBUG",
        "HUB_SPOKE_CALL_TIMEOUT_S": "2.5",
    }
    cfg = HubConfig.load(write(tmp_path, FULL), env)
    assert cfg.name == "hub-b"
    assert cfg.listen == "127.0.0.1:0"
    assert cfg.key_file == Path("rel/hub.key")  # env paths are relative to the cwd
    assert cfg.trust_file == Path("/t.toml")
    assert cfg.redis_url == "redis://winner:6379/0"
    assert cfg.log_level == "debug"
    assert cfg.spoke_call_timeout_s == 2.5


def test_plain_redis_url_is_the_fallback(tmp_path: Path) -> None:
    cfg = HubConfig.load(write(tmp_path, FULL), {"REDIS_URL": "redis://fallback:6379/0"})
    assert cfg.redis_url == "redis://fallback:6379/0"


def test_env_alone_is_enough_and_hub_spokes_lists_spokes() -> None:
    env = {
        "HUB_KEY_FILE": "/k",
        "HUB_TRUST_FILE": "/t",
        "HUB_SPOKES": "s1=127.0.0.1:1, s2=127.0.0.1:2",
    }
    cfg = HubConfig.load(None, env)
    assert cfg.name == "hub"
    assert cfg.listen == "127.0.0.1:7100"
    assert [(s.name, s.address) for s in cfg.spokes] == [
        ("s1", "127.0.0.1:1"),
        ("s2", "127.0.0.1:2"),
    ]


def test_replace_applies_flags_and_validates_again(tmp_path: Path) -> None:
    cfg = HubConfig.load(write(tmp_path, FULL), {})
    assert cfg.replace(listen="127.0.0.1:0").listen == "127.0.0.1:0"
    with pytest.raises(HubConfigError, match="listen"):
        cfg.replace(listen="nowhere")
    with pytest.raises(HubConfigError):
        cfg.replace(no_such_option=1)


def test_repr_redacts_the_redis_password(tmp_path: Path) -> None:
    text = repr(HubConfig.load(write(tmp_path, FULL), {}))
    assert "s3cret" not in text
    assert "redis://:***@127.0.0.1:6379/2" in text


BASE = 'key_file = "k"\ntrust_file = "t"\n'


@pytest.mark.parametrize(
    ("text", "env", "match"),
    [
        (BASE + "colour = 1\n", {}, "unknown option 'colour'"),
        (
            BASE + '[[spokes]]\nname = "s"\naddress = "h:1"\nweight = 2\n',
            {},
            "unknown option 'weight'",
        ),
        (BASE + '[[spokes]]\nname = "s"\n', {}, "needs a name and an address"),
        (BASE + '[[spokes]]\nname = "s"\naddress = "h:1"\nlabels = { a = 1 }\n', {}, "labels"),
        (BASE + 'spokes = "s1"\n', {}, "array of tables"),
        (
            BASE
            + '[[spokes]]\nname = "s"\naddress = "h:1"\n[[spokes]]\nname = "s"\naddress = "h:2"\n',
            {},
            "listed twice",
        ),
        (BASE + '[[spokes]]\nname = "hub"\naddress = "h:1"\n', {}, "hub's own name"),
        (BASE + '[[spokes]]\nname = "a/b"\naddress = "h:1"\n', {}, "spokes.name"),
        (BASE + 'listen = "7100"\n', {}, "host:port"),
        (BASE + 'listen = "h:99999"\n', {}, "host:port"),
        (BASE + 'name = ""\n', {}, "name"),
        (BASE + 'log_level = "loud"\n', {}, "log_level"),
        (BASE + "spoke_call_timeout_s = 0\n", {}, "spoke_call_timeout_s must be a positive"),
        (BASE + "max_skew_s = -1\n", {}, "max_skew_s"),
        (BASE + 'max_skew_s = "soon"\n', {}, "max_skew_s must be a number"),
        (BASE + "max_skew_s = true\n", {}, "max_skew_s must be a number"),
        (BASE + "max_message_bytes = 1.5\n", {}, "max_message_bytes must be an integer"),
        (BASE + "max_message_bytes = 10\n", {}, "at least 1024"),
        (BASE + 'redis_url = "http://x"\n', {}, "redis_url"),
        (BASE + "name = 3\n", {}, "name must be a string"),
        ('trust_file = "t"\n', {}, "key_file is required"),
        ('key_file = "k"\n', {}, "trust_file is required"),
        (BASE, {"HUB_MAX_SKEW_S": "x"}, "HUB_MAX_SKEW_S must be a number"),
        (BASE, {"HUB_SPOKES": "justaname"}, "HUB_SPOKES"),
        ("name = \n", {}, "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(
    tmp_path: Path, text: str, env: dict[str, str], match: str
) -> None:
    with pytest.raises(HubConfigError, match=match) as info:
        HubConfig.load(write(tmp_path, text), env)
    assert "\n" not in str(info.value).strip()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="not found"):
        HubConfig.load(tmp_path / "absent.toml", {})


def test_client_config_paths_and_address_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'hub = "h:1"\nhub_name = "hub-x"\nprincipal = "me"\nkey_file = "k/me.key"\n'
        'trust_file = "/abs/trust.toml"\n',
        "hubctl.toml",
    )
    cfg = hc.load_client_config(path, {})
    assert (cfg.hub, cfg.hub_name, cfg.principal) == ("h:1", "hub-x", "me")
    assert cfg.key_file == tmp_path / "k/me.key"
    assert cfg.trust_file == Path("/abs/trust.toml")
    assert hc.load_client_config(path, {"HUBCTL_HUB": "h:2"}).hub == "h:2"
    assert hc.load_client_config(path, {"HUBCTL_HUB": "h:2"}, hub="h:3").hub == "h:3"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('key_file = "k"\ntrust_file = "t"\nport = "1"\n', "unknown option 'port'"),
        ('trust_file = "t"\n', "key_file is required"),
        ('key_file = "k"\ntrust_file = 3\n', "trust_file must be a non-empty string"),
        ("key_file = ", "not valid TOML"),
    ],
)
def test_bad_client_config(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(hc.ClientConfigError, match=match):
        hc.load_client_config(write(tmp_path, text, "hubctl.toml"), {})


def test_client_from_config_reports_a_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'key_file = "none.key"\ntrust_file = "t.toml"\n', "hubctl.toml")
    with pytest.raises(hc.ClientConfigError, match="private key file not found"):
        hc.client_from_config(path, env={})


def test_federation_files_load_everywhere(tmp_path: Path) -> None:
    files = federation_files.write_federation(
        tmp_path / "fed",
        [
            ("spoke-1", "127.0.0.1:7101", "redis://r1/0"),
            ("spoke-2", "127.0.0.1:7102", "redis://r2/0"),
        ],
        "127.0.0.1:7100",
        "redis://hubredis/0",
    )
    cfg = HubConfig.load(files.hub_config, {})
    assert cfg.name == files.hub_name == "hub"
    assert cfg.redis_url == "redis://hubredis/0"
    assert [(s.name, s.address) for s in cfg.spokes] == [
        ("spoke-1", "127.0.0.1:7101"),
        ("spoke-2", "127.0.0.1:7102"),
    ]
    keys.load_private(cfg.key_file, cfg.name)
    trust = TrustStore.from_file(cfg.trust_file)
    assert trust.peers(Role.SPOKE) == ["spoke-1", "spoke-2"]
    assert trust.peers(Role.CLIENT) == ["operator"]
    assert trust.peers(Role.HUB) == ["hub"]
    assert set(files.spoke_configs) == {"spoke-1", "spoke-2"}
    spoke_text = files.spoke_configs["spoke-1"].read_text()
    assert 'redis_url = "redis://r1/0"' in spoke_text
    assert "[profiles.synthetic]" in spoke_text
    client = hc.client_from_config(files.hubctl_config, env={})
    assert (client.address, client.principal, client.hub_name) == (
        "127.0.0.1:7100",
        "operator",
        "hub",
    )
    with pytest.raises(FileExistsError):  # never overwrites keys
        federation_files.write_federation(tmp_path / "fed", [], "127.0.0.1:7100", "redis://x/0")


def test_public_names_are_pinned() -> None:
    assert sorted(hub.__all__) == [
        "FederationFiles",
        "HubApp",
        "HubConfig",
        "HubConfigError",
        "HubServicer",
        "SpokeEntry",
        "write_federation",
    ]
    for name in hub.__all__:
        assert getattr(hub, name) is not None
    with pytest.raises(AttributeError):
        _ = hub.nothing_here


def test_cli_does_not_load_server_modules() -> None:
    """hubctl's import graph stays on the client side (STYLE §1)."""
    import subprocess
    import sys

    code = (
        "import sys, hubspoke.hub.cli; "
        "server = ('hubspoke.hub.app', 'hubspoke.hub.service', "
        "'hubspoke.hub.relay', 'hubspoke.hub.store'); "
        "bad = [m for m in server if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert importlib.import_module("hubspoke.hub.cli") is not None
