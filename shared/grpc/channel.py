"""Client channels whose keepalive agrees with our servers (no too_many_pings GOAWAY)."""

from __future__ import annotations

import grpc

from .server import ServerOptions


def channel_args(opts: ServerOptions) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", opts.max_message_bytes),
        ("grpc.max_send_message_length", opts.max_message_bytes),
        # Pings no more often than the server's min_ping_interval permits.
        ("grpc.keepalive_time_ms", max(opts.keepalive_time_ms, opts.min_ping_interval_ms)),
        ("grpc.keepalive_timeout_ms", opts.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 2),
        ("grpc.enable_retries", 0),
        # gRPC's default reconnect backoff grows to 120 s: a spoke back from a long outage
        # would look unreachable through a reused channel for up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 3000),
    ]


def open_channel(
    address: str,
    options: ServerOptions | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """Open an aio channel; call inside the running loop and close it with ``await close()``.

    Args:
        server_name: with ``credentials``, the name the server's certificate must carry
            (instead of the dialled host), so a peer can be dialled by IP and checked by name.
    """
    args: list[tuple[str, int | str]] = [*channel_args(options or ServerOptions())]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=args)
    if server_name:
        args.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, credentials, options=args)
