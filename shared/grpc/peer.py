"""The calling peer's transport identity, and its binding to the command's signer.

Over mutual TLS the transport has verified the caller's certificate against the federation's
CA before any handler runs. :func:`remember_peer` keeps what that certificate names (from
``context.auth_context()``) for the rest of the call, and :func:`bind_signer` refuses a
signed command or relay whose signer the certificate does not name: UNAUTHENTICATED,
``TRANSPORT_IDENTITY_MISMATCH``. So a stolen signing key is of no use from a host holding
another peer's certificate, and one peer's certificate cannot carry another's commands.

The mapping from certificate to peer name: a certificate names the peer of its subject CN
(exactly), and of each of its DNS subject alternative names (compared without case, as DNS
names are). Every certificate ``hubctl certs init`` and ``hubctl init`` issue carries the
peer's name as CN and first DNS name. Plaintext (loopback only) and TLS callers without a
certificate (a server with ``require_client_cert = false``) are bound to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from hubspoke import errors

__all__ = [
    "TransportPeer",
    "assume_peer",
    "bind_signer",
    "current_peer",
    "peer_of",
    "remember_peer",
]


@dataclass(frozen=True, slots=True)
class TransportPeer:
    """What the transport verified about the caller."""

    tls: bool
    """The call came over TLS."""
    common_name: str = ""
    """The subject CN of the caller's certificate ("" without one)."""
    dns_names: frozenset[str] = frozenset()
    """The DNS subject alternative names of the caller's certificate, in lower case."""

    @property
    def certified(self) -> bool:
        """The caller presented a certificate that names someone."""
        return self.tls and bool(self.common_name or self.dns_names)

    def names(self, signer: str) -> bool:
        """Whether the certificate names ``signer`` (see the module docstring)."""
        return signer == self.common_name or signer.lower() in self.dns_names

    def describe(self) -> str:
        """The certificate's names, for an error message."""
        shown = [self.common_name] if self.common_name else []
        shown += sorted(n for n in self.dns_names if n != self.common_name.lower())
        return ", ".join(shown) or "no name"


_PLAINTEXT = TransportPeer(tls=False)
_current: ContextVar[TransportPeer] = ContextVar("hubspoke_transport_peer", default=_PLAINTEXT)


def _values(auth: Mapping[str, Iterable[bytes]], key: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in auth.get(key, ())]


def peer_of(context: grpc.aio.ServicerContext[Any, Any]) -> TransportPeer:
    """The transport identity of a call, from its auth context."""
    auth = context.auth_context() or {}
    if b"ssl" not in auth.get("transport_security_type", ()):
        return _PLAINTEXT
    common = _values(auth, "x509_common_name")
    # peer_dns (grpc >= 1.41) holds the DNS SANs only; older cores mix them with IPs.
    dns = _values(auth, "peer_dns") or _values(auth, "x509_subject_alternative_name")
    return TransportPeer(
        tls=True,
        common_name=common[0] if common else "",
        dns_names=frozenset(n.lower() for n in dns),
    )


def remember_peer(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Keep the call's transport identity for :func:`bind_signer` (the server's handler
    wrapper calls it first, for every call)."""
    _current.set(peer_of(context))


def assume_peer(peer: TransportPeer) -> None:
    """Set the transport identity for a call that did not arrive on a server: a connect-mode
    spoke serving its hub's call names the hub whose certificate it checked when it dialled
    (spoke/link.py), so :func:`bind_signer` holds relays to that hub as over a server."""
    _current.set(peer)


def current_peer() -> TransportPeer:
    """The transport identity of the call being handled (plaintext outside any call)."""
    return _current.get()


def bind_signer(signer: str, what: str) -> None:
    """Refuse ``signer`` if the caller's certificate does not name it.

    ``what`` says whose signature it is ("command", "relay"), for the message.

    Raises:
        TransportIdentityMismatchError: the caller's certificate names another peer.
    """
    peer = _current.get()
    if peer.certified and not peer.names(signer):
        raise errors.TransportIdentityMismatchError(
            f"the {what} is signed by {signer!r}, but the caller's TLS certificate is for "
            f"{peer.describe()}",
            signer=signer,
        )
