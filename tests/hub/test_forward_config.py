"""Several hubds' options: a connect-mode spoke's list of hub addresses (each checked, each
held to plaintext-only-on-loopback), the hub's lease and forward options (one line naming
the option), and the forward address other hubds dial."""

from __future__ import annotations

import socket

import pytest

from hubspoke.hub.config import HubConfig, HubConfigError
from hubspoke.hub.forward_wiring import forward_address
from hubspoke.spoke.config import SpokeConfig, SpokeConfigError
from hubspoke.spoke.link import hub_addresses
from hubspoke.spoke.link_server import link_config, server_factory

CONNECT = {"SPOKE_LINK": "connect"}


def _hub(**env: str) -> HubConfig:
    return HubConfig.load(None, {"HUB_KEY_FILE": "hub.key", "HUB_TRUST_FILE": "t.toml", **env})


def test_a_spoke_takes_several_hub_addresses_in_order() -> None:
    cfg = SpokeConfig.load(None, {**CONNECT, "SPOKE_HUB_ADDRESS": "127.0.0.1:7100, [::1]:7200"})
    assert hub_addresses(link_config(cfg).hub_address) == ["127.0.0.1:7100", "[::1]:7200"]
    with pytest.raises(SpokeConfigError, match="hub_address"):
        SpokeConfig.load(None, {**CONNECT, "SPOKE_HUB_ADDRESS": "127.0.0.1:7100,no-port"})


def test_plaintext_is_refused_if_any_hub_address_is_not_loopback() -> None:
    env = {**CONNECT, "SPOKE_HUB_ADDRESS": "127.0.0.1:7100,10.1.2.3:7100"}
    cfg = SpokeConfig.load(None, env)
    with pytest.raises(SpokeConfigError, match=r"hub_address 10\.1\.2\.3:7100"):
        server_factory(cfg)


def test_the_lease_and_forward_options() -> None:
    cfg = _hub()
    assert (cfg.link_lease_ttl_s, cfg.link_lease_poll_s, cfg.link_forward_timeout_s) == (
        15.0,
        1.0,
        3.0,
    )
    for option in ("link_lease_ttl_s", "link_lease_poll_s", "link_forward_timeout_s"):
        with pytest.raises(HubConfigError, match=option):
            _hub(**{f"HUB_{option.upper()}": "0"})
    with pytest.raises(HubConfigError, match="link_forward_address"):
        _hub(HUB_LINK_FORWARD_ADDRESS="no-port")


def test_the_forward_address_defaults_to_the_listen_host_and_bound_port() -> None:
    assert forward_address(_hub(HUB_LISTEN="127.0.0.1:0"), 7345) == "127.0.0.1:7345"
    assert forward_address(_hub(HUB_LISTEN="[::1]:7100"), 7100) == "[::1]:7100"
    wildcard = _hub(HUB_LISTEN="0.0.0.0:7100")
    assert forward_address(wildcard, 7100) == f"{socket.gethostname()}:7100"
    given = _hub(HUB_LINK_FORWARD_ADDRESS="hub-a.internal:7100")
    assert forward_address(given, 7100) == "hub-a.internal:7100"
