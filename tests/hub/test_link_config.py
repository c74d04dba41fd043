"""Connect link mode's configuration: hub spoke entries with ``link``, the hub's and the
spoke's link options, and what they refuse (one line naming the option)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubspoke.hub.config import HubConfig, HubConfigError
from hubspoke.spoke.config import SpokeConfig, SpokeConfigError

HUB = """\
key_file = "hub.key"
trust_file = "trust.toml"
[[spokes]]
name = "spoke-1"
address = "127.0.0.1:7101"
[[spokes]]
name = "laptop-1"
link = "connect"
"""


def write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_hub_lists_dial_and_connect_spokes(tmp_path: Path) -> None:
    cfg = HubConfig.load(write(tmp_path, HUB, "hub.toml"), {})
    dial, connect = cfg.spokes
    assert (dial.link, dial.address) == ("dial", "127.0.0.1:7101")
    assert (connect.link, connect.address) == ("connect", "")
    assert (cfg.link_max_pending_calls, cfg.link_missed_heartbeats) == (256, 3)


def test_hub_spokes_env_names_connect_spokes(tmp_path: Path) -> None:
    env = {"HUB_SPOKES": "a=127.0.0.1:1,b=connect", "HUB_LINK_MAX_PENDING_CALLS": "8"}
    cfg = HubConfig.load(write(tmp_path, HUB, "hub.toml"), env)
    assert [(s.name, s.link, s.address) for s in cfg.spokes] == [
        ("a", "dial", "127.0.0.1:1"),
        ("b", "connect", ""),
    ]
    assert cfg.link_max_pending_calls == 8


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ('name = "x"\nlink = "carrier-pigeon"', "link must be dial or connect"),
        ('name = "x"\nlink = "connect"\naddress = "127.0.0.1:1"', "has no address"),
        ('name = "x"', "needs a name and an address"),
    ],
)
def test_bad_link_entries_are_refused(tmp_path: Path, entry: str, says: str) -> None:
    text = f'key_file = "k"\ntrust_file = "t"\n[[spokes]]\n{entry}\n'
    with pytest.raises(HubConfigError, match=says):
        HubConfig.load(write(tmp_path, text, "hub.toml"), {})


@pytest.mark.parametrize(
    "option", ["link_max_pending_calls", "link_call_buffer", "link_missed_heartbeats"]
)
def test_hub_link_counts_must_be_positive(tmp_path: Path, option: str) -> None:
    with pytest.raises(HubConfigError, match=option):
        HubConfig.load(write(tmp_path, HUB, "hub.toml"), {f"HUB_{option.upper()}": "0"})


def test_a_connect_spoke_needs_a_hub_address(tmp_path: Path) -> None:
    cfg = SpokeConfig.load(None, {"SPOKE_LINK": "connect", "SPOKE_HUB_ADDRESS": "hub.example:7100"})
    assert (cfg.link, cfg.hub_address, cfg.hub_name, cfg.heartbeat_interval_s) == (
        "connect",
        "hub.example:7100",
        "hub",
        5.0,
    )
    with pytest.raises(SpokeConfigError, match="hub_address"):
        SpokeConfig.load(None, {"SPOKE_LINK": "connect"})
    with pytest.raises(SpokeConfigError, match="link must be dial or connect"):
        SpokeConfig.load(None, {"SPOKE_LINK": "listen"})
    with pytest.raises(SpokeConfigError, match="heartbeat_interval_s"):
        SpokeConfig.load(
            None,
            {
                "SPOKE_LINK": "connect",
                "SPOKE_HUB_ADDRESS": "127.0.0.1:7100",
                "SPOKE_HEARTBEAT_INTERVAL_S": "0",
            },
        )
    with pytest.raises(SpokeConfigError, match="link_reconnect_max_s"):
        SpokeConfig.load(None, {"SPOKE_LINK_RECONNECT_MAX_S": "0.1"})
