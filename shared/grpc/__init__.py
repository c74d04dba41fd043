"""Transport: server assembly, client channels, error <-> status conversion."""

from __future__ import annotations

from .channel import open_channel
from .peer import TransportPeer, bind_signer, current_peer
from .server import BuiltServer, ServerOptions, Service, bind_command, build_server
from .status import CallFailure, from_rpc_error, to_status

__all__ = [
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
