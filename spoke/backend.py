"""The spoke's edge to Redis: its clients, and the queue layer's errors.

Every module of the queue layer (records, jobs, kills, slots, watch) talks to Redis through
clients made here and turns Redis failures into ``BackendError`` with ``@backend``.

Exceptions (converted to gRPC status once, by ``_queue_errors`` in spoke/service.py)::

    QueueError
    ├── AgentMissingError         no record with that id
    ├── AgentReusedError          same id, different spawn (digest differs)
    ├── TransitionError           the state does not allow the change
    ├── QueueFullError            the waiting backlog is at its cap
    ├── QuotaError                the issuer's own waiting agents are at its quota
    ├── PageTokenError            a page token this queue did not issue
    └── BackendError              Redis is unreachable or failed
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hubspoke.redis_access import RedisAccess, access


class QueueError(Exception):
    """Base of the queue layer's errors."""


class AgentMissingError(QueueError):
    pass


class AgentReusedError(QueueError):
    pass


class TransitionError(QueueError):
    def __init__(self, agent_id: str, current: str) -> None:
        super().__init__(f"agent {agent_id} is {current}")
        self.current = current


class QueueFullError(QueueError):
    pass


class QuotaError(QueueError):
    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class PageTokenError(QueueError):
    pass


class BackendError(QueueError):
    pass


P = ParamSpec("P")
T = TypeVar("T")


def backend(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis failures into BackendError at the queue layer's edge."""

    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BackendError(f"redis unavailable: {type(exc).__name__}") from exc
        except RedisError as exc:
            raise BackendError(f"redis error: {exc}") from exc

    return wrapped


POOL_SIZE = 100
"""Connections of one command client (see ``command_client``)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def command_client(redis: str | RedisAccess, op_timeout_s: float) -> aioredis.Redis:
    """A client for our own short calls: each is bounded by ``op_timeout_s``. Nothing that
    blocks in Redis (XREAD BLOCK, BRPOPLPUSH, pub/sub) may use one (PITFALLS).

    Its pool of ``POOL_SIZE`` connections makes a burst of calls wait for a free connection
    (up to ``op_timeout_s``) instead of failing at once, as redis-py's default pool does.

    ``redis`` is the daemon's Redis access (user, password file, TLS) or a bare URL; every
    client factory here and in spoke/fanout.py adds ``RedisAccess.client_kwargs()``."""
    target = access(redis)
    pool = aioredis.BlockingConnectionPool.from_url(
        target.url,
        max_connections=POOL_SIZE,
        timeout=op_timeout_s,
        socket_timeout=op_timeout_s,
        socket_connect_timeout=op_timeout_s,
        **reconnecting(),
        **target.client_kwargs(),
    )
    return aioredis.Redis.from_pool(pool)


def bullmq_client(redis: str | RedisAccess) -> aioredis.Redis:
    """A client for bullmq: no socket timeout, since its blocking calls wait long (PITFALLS),
    and decoded responses, which bullmq's job parsing assumes (bytes give empty job data)."""
    target = access(redis)
    return aioredis.Redis.from_url(
        target.url,
        socket_timeout=None,
        socket_connect_timeout=5,
        decode_responses=True,
        **reconnecting(),
        **target.client_kwargs(),
    )


def reconnecting() -> dict[str, Any]:
    """After a Redis restart every pooled connection is dead: retry a command that failed
    on one (three times, backing off), and check a connection idle for 5 s before use.
    A retried script is safe: each checks state first (a create finds its record, a
    transition that already happened is refused and its caller knows what that means)."""
    return {
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 5,
    }
