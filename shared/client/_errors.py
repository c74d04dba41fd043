"""The client's errors: a failed or unverifiable call, and an unusable client config.

Hierarchy::

    hubspoke.errors.HubspokeError
     ├── CallError                 a call failed, or its reply could not be verified:
     │                             gRPC code, ErrorInfo reason, message, metadata
     └── hubspoke.errors.ConfigError
          └── ClientConfigError    the hubctl config, key, trust store or TLS files are unusable
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import grpc

from hubspoke import errors
from hubspoke import grpc as sgrpc

__all__ = ["REPLY_INVALID", "CallError", "ClientConfigError"]

REPLY_INVALID: Final = "REPLY_INVALID"
"""The reason of a reply this client refused: unsigned, mis-signed, or not an answer to what
it asked (another command, another agent, another spoke)."""


class CallError(errors.HubspokeError):
    """A call to the hub failed, or its reply could not be verified.

    Attributes:
        code: the gRPC status code (INTERNAL for a reply that failed verification).
        reason: the ``ErrorInfo`` reason (UPPER_SNAKE), or "" when the server sent none.
        message: the server's message, or why the reply was refused.
        metadata: the ``ErrorInfo`` metadata.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @classmethod
    def from_failure(cls, failure: sgrpc.CallFailure) -> CallError:
        return cls(failure.code, failure.message, failure.reason, failure.metadata)

    @classmethod
    def invalid_reply(cls, message: str) -> CallError:
        return cls(grpc.StatusCode.INTERNAL, message, REPLY_INVALID)

    def __str__(self) -> str:
        return f"{self.message} [{self.reason or self.code.name}]"


class ClientConfigError(errors.ConfigError):
    """The hubctl config (or a file it names) is missing or invalid; the message is one line."""
