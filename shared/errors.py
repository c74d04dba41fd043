"""Hubspoke's error root, and the domain errors that cross the wire with their gRPC status.

Hierarchy (``HubspokeError`` is the root of everything Hubspoke raises on purpose)::

    HubspokeError
    ├── ConfigError                   (a config, key, trust, policy or TLS file is unusable)
    │   ├── keys.KeyFileError, trust.TrustConfigError, policy.PolicyConfigError,
    │   │   tls.TlsError, metrics.MetricsConfigError, spoke.profiles.ProfileConfigError
    │   ├── config.DaemonConfigError  (URL passwords redacted in its message)
    │   │   └── hub.config.HubConfigError, spoke.config.SpokeConfigError
    │   └── version.SchemaVersionError (a Redis holds a newer schema than this code)
    └── CommandError                  (INTERNAL, INTERNAL)
        ├── InvalidCommandError           (INVALID_ARGUMENT, INVALID_COMMAND)
        │   └── UnknownProfileError       (INVALID_ARGUMENT, UNKNOWN_PROFILE)
        ├── SignatureInvalidError         (UNAUTHENTICATED, SIGNATURE_INVALID)
        ├── TransportIdentityMismatchError (UNAUTHENTICATED, TRANSPORT_IDENTITY_MISMATCH)
        ├── CommandExpiredError           (UNAUTHENTICATED, COMMAND_EXPIRED)
        ├── NonceReusedError              (UNAUTHENTICATED, NONCE_REUSED)
        ├── KeyNotAuthorizedError         (PERMISSION_DENIED, KEY_NOT_AUTHORIZED)
        ├── WrongAudienceError            (PERMISSION_DENIED, WRONG_SPOKE)
        ├── AgentNotFoundError            (NOT_FOUND, AGENT_NOT_FOUND)
        ├── SpokeNotFoundError            (NOT_FOUND, SPOKE_NOT_FOUND)
        ├── CommandIdReusedError          (ALREADY_EXISTS, COMMAND_ID_REUSED)
        ├── AgentNotRunningError          (FAILED_PRECONDITION, AGENT_NOT_RUNNING)
        ├── StartDeadlinePassedError      (FAILED_PRECONDITION, START_DEADLINE_PASSED)
        ├── version.ProtocolVersionError  (FAILED_PRECONDITION, PROTOCOL_VERSION_MISMATCH)
        ├── ConcurrentModificationError   (ABORTED, CONCURRENT_MODIFICATION)
        ├── CapacityExceededError         (RESOURCE_EXHAUSTED, CAPACITY_EXCEEDED)
        ├── QuotaExceededError            (RESOURCE_EXHAUSTED, QUOTA_EXCEEDED)
        ├── BackendUnavailableError       (UNAVAILABLE, BACKEND_UNAVAILABLE)
        ├── SpokeUnavailableError         (UNAVAILABLE, SPOKE_UNAVAILABLE)
        └── RemoteCallError               (as the remote peer said: passed through)

Servers raise these; ``hubspoke.grpc.status`` turns them into a ``google.rpc.Status``
with an ``ErrorInfo`` at exactly one place, the handler boundary.
"""

from __future__ import annotations

import grpc


class HubspokeError(Exception):
    """Root of every error Hubspoke raises on purpose; catch it to catch all of ours."""


class ConfigError(HubspokeError):
    """A config, key, trust, policy or TLS file (or an option) is missing or unusable."""


class CommandError(HubspokeError):
    """Base of every error a peer may see. Messages must never contain secrets or payloads."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata)


class InvalidCommandError(CommandError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_COMMAND"


class UnknownProfileError(InvalidCommandError):
    reason = "UNKNOWN_PROFILE"


class SignatureInvalidError(CommandError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "SIGNATURE_INVALID"


class TransportIdentityMismatchError(CommandError):
    """Over mutual TLS, the peer's certificate does not name the command's signer (for a
    relay, the relaying hub): a valid signature sent over another peer's connection."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "TRANSPORT_IDENTITY_MISMATCH"


class CommandExpiredError(CommandError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "COMMAND_EXPIRED"


class NonceReusedError(CommandError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "NONCE_REUSED"


class KeyNotAuthorizedError(CommandError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "KEY_NOT_AUTHORIZED"


class WrongAudienceError(CommandError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "WRONG_SPOKE"


class AgentNotFoundError(CommandError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "AGENT_NOT_FOUND"


class SpokeNotFoundError(CommandError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "SPOKE_NOT_FOUND"


class CommandIdReusedError(CommandError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "COMMAND_ID_REUSED"


class AgentNotRunningError(CommandError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "AGENT_NOT_RUNNING"


class StartDeadlinePassedError(CommandError):
    """The agent can no longer start: a replay past its original command's expiry (issue 11
    makes this the agent's start deadline)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "START_DEADLINE_PASSED"


class ConcurrentModificationError(CommandError):
    code = grpc.StatusCode.ABORTED
    reason = "CONCURRENT_MODIFICATION"


class CapacityExceededError(CommandError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "CAPACITY_EXCEEDED"


class QuotaExceededError(CommandError):
    """One principal's own limit on a spoke (its queued agents), not the spoke's capacity:
    other principals may still be served."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUOTA_EXCEEDED"


class BackendUnavailableError(CommandError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "BACKEND_UNAVAILABLE"


class SpokeUnavailableError(CommandError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "SPOKE_UNAVAILABLE"


class RemoteCallError(CommandError):
    """A downstream peer's error, passed through with its own code, reason and metadata."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str]
    ) -> None:
        super().__init__(message, **metadata)
        self.code = code
        self.reason = reason or code.name
