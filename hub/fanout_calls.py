"""The hub's fan-out calls: one command asked of many spokes at once, under one deadline.

:class:`FanOut` asks every named spoke concurrently (not one whose circuit is open, or that
the probe loop found DISCONNECTED) and hands back one :class:`Fanned` per spoke: its reply, or
the error and the reason it gave none. The functions below turn those answers into what
HubService returns: a list fan-out's response (the pages that fit one message, the hub's
signed account of which spokes answered), a queue-stats fan-out's, and the one agent a get
fan-out found (never a guess between two).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
import structlog

from hubspoke import errors, fanout
from hubspoke.gen.federation.v1 import command_pb2, hub_service_pb2
from hubspoke.keys import SigningKey

from .circuit import CircuitOpenError
from .health import HealthMonitor, SpokeState
from .relay import Inbound, Relayer

__all__ = ["FanOut", "Fanned", "found_agent", "list_response", "queue_stats_response"]

log = structlog.get_logger("hubspoke.hub.service")

UNANSWERED = frozenset({"circuit_open", "disconnected", "deadline", "unavailable"})
"""Fan-out reasons of a spoke that gave no answer at all (an error is an answer)."""

FAN_OUT_ROOM = 4 * 1024
"""Room under the message limit for a list fan-out's own parts (the hub's signed account)."""


@dataclass(frozen=True, slots=True)
class Fanned:
    """What one spoke answered during a fan-out: a reply, or the error it raised."""

    spoke: str
    reply_env: command_pb2.SignedEnvelope | None = None
    reply: command_pb2.Reply | None = None
    error: errors.CommandError | None = None
    reason: str = ""
    """Why it gave no reply: circuit_open, disconnected, deadline, unavailable or error."""


class FanOut:
    """Asks many spokes at once through the relayer, all under one deadline."""

    def __init__(self, relayer: Relayer, monitor: HealthMonitor | None, timeout_s: float) -> None:
        """``monitor``: the probe loop's health records; without it every spoke is asked."""
        self._relayer = relayer
        self._monitor = monitor
        self._timeout_s = timeout_s

    async def ask(self, inbound: Inbound, names: Sequence[str]) -> list[Fanned]:
        """Ask every spoke in ``names`` at once, all under one deadline (fanout_timeout_s).

        A spoke whose circuit is open, or that the probe loop found DISCONNECTED, is not
        asked; each spoke without a reply carries the reason (``Fanned.reason``)."""
        deadline = time.monotonic() + self._timeout_s
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._try(n, inbound, deadline)) for n in names]
        return [t.result() for t in tasks]

    async def _try(self, spoke: str, inbound: Inbound, deadline: float) -> Fanned:
        try:
            self._relayer.circuit_check(spoke)
        except CircuitOpenError as exc:
            return Fanned(spoke=spoke, error=exc, reason="circuit_open")
        record = self._monitor.get(spoke) if self._monitor is not None else None
        if record is not None and record.state is SpokeState.DISCONNECTED:
            return Fanned(
                spoke=spoke,
                error=errors.SpokeUnavailableError(f"spoke {spoke} is disconnected", spoke=spoke),
                reason="disconnected",
            )
        left = max(deadline - time.monotonic(), 0.001)
        try:
            # The gRPC deadline ends the call; the timeout is a backstop a hung task cannot pass.
            async with asyncio.timeout(left + 0.5):
                reply_env, reply = await self._relayer.call(spoke, inbound, timeout_s=left)
        except CircuitOpenError as exc:
            return Fanned(spoke=spoke, error=exc, reason="circuit_open")
        except errors.SpokeUnavailableError as exc:
            late = time.monotonic() >= deadline - 0.01
            return Fanned(spoke=spoke, error=exc, reason="deadline" if late else "unavailable")
        except TimeoutError:
            failed = errors.SpokeUnavailableError(f"spoke {spoke} did not answer in time")
            return Fanned(spoke=spoke, error=failed, reason="deadline")
        except errors.CommandError as exc:
            return Fanned(spoke=spoke, error=exc, reason="error")
        return Fanned(spoke=spoke, reply_env=reply_env, reply=reply)


def list_response(
    answers: Sequence[Fanned],
    inbound: Inbound,
    *,
    hub: str,
    key: SigningKey,
    max_message_bytes: int,
) -> hub_service_pb2.HubServiceListAgentsResponse:
    """A list fan-out's response: every page that fits one message, and the hub's signed
    account of the spokes that answered, did not, or were left out for room."""
    response = hub_service_pb2.HubServiceListAgentsResponse()
    answered: list[str] = []
    # Each spoke's page fits one message, not all of them together: the replies that
    # would pass the limit stay out and are named (signed) for the client to list alone.
    names = sum(len(a.spoke) + 4 for a in answers)  # each name twice: a list, the account
    room = max_message_bytes - FAN_OUT_ROOM - 2 * names
    for a in answers:
        if a.reply_env is not None:
            room -= a.reply_env.ByteSize() + 6
            if room < 0:
                response.omitted_spokes.append(a.spoke)
                continue
            response.replies.append(a.reply_env)
            answered.append(a.spoke)
        else:
            if a.reason == "error":
                log.warning(
                    "list_spoke_failed", spoke=a.spoke, reason=getattr(a.error, "reason", "")
                )
            response.unreachable_spokes.append(a.spoke)
    response.hub_reply.CopyFrom(
        _account(
            answers,
            inbound,
            hub,
            key,
            answered=answered,
            unreachable=response.unreachable_spokes,
            omitted=response.omitted_spokes,
        )
    )
    return response


def queue_stats_response(
    answers: Sequence[Fanned], inbound: Inbound, *, hub: str, key: SigningKey
) -> hub_service_pb2.HubServiceGetQueueStatsResponse:
    """A queue-stats fan-out's response: every spoke's counts, and the hub's signed account
    of which answered and why the others did not (counts are small: no page limit needed)."""
    response = hub_service_pb2.HubServiceGetQueueStatsResponse()
    for a in answers:
        if a.reply_env is not None:
            response.replies.append(a.reply_env)
        else:
            response.unreachable_spokes.append(a.spoke)
    answered = [a.spoke for a in answers if a.reply_env is not None]
    response.hub_reply.CopyFrom(
        _account(answers, inbound, hub, key, answered, response.unreachable_spokes)
    )
    return response


def _account(
    answers: Sequence[Fanned],
    inbound: Inbound,
    hub: str,
    key: SigningKey,
    answered: Iterable[str],
    unreachable: Iterable[str],
    omitted: Iterable[str] = (),
) -> command_pb2.SignedEnvelope:
    """The hub's signed account of a fan-out, with why each spoke without a reply gave none."""
    return fanout.sign_fan_out(
        hub=hub,
        key=key,
        command_id=inbound.command.command_id,
        request_digest=inbound.digest,
        answered=answered,
        unreachable=unreachable,
        omitted=omitted,
        reasons={a.spoke: a.reason for a in answers if a.reply_env is None},
    )


def found_agent(answers: Sequence[Fanned], agent_id: str) -> command_pb2.SignedEnvelope:
    """The reply of a get fan-out in which at most one spoke found ``agent_id`` (the caller
    reports two as AGENT_AMBIGUOUS before it asks this).

    A spoke that did not answer, or answered with an error, may hold the agent too but
    cannot say so; the one copy the others found is still the answer. With none found,
    a spoke's error other than NOT_FOUND is the answer (the first, in config order),
    then UNAVAILABLE if some spoke did not answer, else NOT_FOUND.
    """
    for answer in answers:
        if answer.reply_env is not None:
            return answer.reply_env
    unreachable: list[str] = []
    for answer in answers:
        if answer.reason in UNANSWERED:
            unreachable.append(f"{answer.spoke} ({answer.reason})")
        elif answer.error is not None and answer.error.code != grpc.StatusCode.NOT_FOUND:
            raise answer.error
    if unreachable:
        raise errors.SpokeUnavailableError(
            f"agent {agent_id} not found on the spokes that answered; "
            f"unreachable: {', '.join(sorted(unreachable))}",
            unreachable_spokes=",".join(sorted(a.split(" ")[0] for a in unreachable)),
        )
    raise errors.AgentNotFoundError(f"no spoke has agent {agent_id}", agent=agent_id)
