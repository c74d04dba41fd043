"""``hubspoke.spoke`` and ``hubspoke.grpc`` export exactly their public names (the other
packages pin theirs in tests/client, tests/hub/test_config.py and tests/shared)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hubspoke import grpc as sgrpc
from hubspoke import spoke


def test_spoke_public_names_are_pinned() -> None:
    assert sorted(spoke.__all__) == [
        "AgentQueue",
        "Profile",
        "ProfileConfigError",
        "SpokeApp",
        "SpokeConfig",
        "SpokeConfigError",
        "SpokeServicer",
    ]
    for name in spoke.__all__:
        assert getattr(spoke, name).__name__ == name
    with pytest.raises(AttributeError, match=r"hubspoke\.spoke"):
        _ = spoke.nothing_here


def test_grpc_public_names_are_pinned() -> None:
    assert sorted(sgrpc.__all__) == [
        "BuiltServer",
        "CallFailure",
        "ServerOptions",
        "Service",
        "TransportPeer",
        "bind_command",
        "bind_signer",
        "build_server",
        "current_peer",
        "from_rpc_error",
        "open_channel",
        "to_status",
    ]
    for name in sgrpc.__all__:
        assert getattr(sgrpc, name) is not None


def test_the_synthetic_agent_loads_no_server_module() -> None:
    code = (
        "import sys, hubspoke.spoke.synthetic; "
        "print(sorted(m for m in sys.modules if m.startswith('hubspoke.spoke.') "
        "and m != 'hubspoke.spoke.synthetic'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
