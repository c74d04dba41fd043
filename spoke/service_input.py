"""SendInput at the spoke: keep a verified message for an agent, deliver or resume with it.

SpokeService.SendInput verifies and authorizes the command (the ``send`` verb, owner scope,
as for kill or verify), checks the text (hubspoke.input_text: 1 to ``max_input_bytes``
bytes, no NUL), then calls :func:`send_input`, which keeps the message with its signed
envelope (spoke/inbox.py) and, for a NEEDS_INPUT agent, queues its next attempt. A running
agent's worker appends it to the agent's inbox (spoke/inbox_files.py) within a second.
Errors of the queue layer become the wire's here:

* a final or NEEDS_VERIFICATION agent: FAILED_PRECONDITION (AGENT_NOT_RUNNING, ``state``);
* ``max_inputs_per_agent`` messages kept already: RESOURCE_EXHAUSTED (QUOTA_EXCEEDED);
* the same command id with other text: ALREADY_EXISTS (COMMAND_ID_REUSED, by the caller's
  ``_queue_errors``); with the same text (a client's retry, re-signed): the agent, as before.
"""

from __future__ import annotations

from hubspoke import errors

from . import inbox
from .model import AgentRecord, AgentState
from .queue import AgentQueue
from .verifier import Authorized

__all__ = ["send_input"]


async def send_input(
    agents: AgentQueue, auth: Authorized, agent_id: str, max_inputs: int
) -> AgentRecord:
    """Keep ``auth``'s send_input message for the agent; resume it if it waits for input.
    Returns the agent as it is now."""
    relay = auth.relay_envelope.SerializeToString() if auth.relay_envelope else b""
    try:
        kept = await agents.inboxes.keep(
            agent_id,
            command_id=auth.command.command_id,
            sender=auth.principal,
            text=auth.command.send_input.text,
            envelope=auth.client_envelope.SerializeToString(),
            relay=relay,
            max_inputs=max_inputs,
        )
    except inbox.NoInputError as exc:
        raise errors.AgentNotRunningError(str(exc), state=exc.state) from exc
    except inbox.InboxFullError as exc:
        raise errors.QuotaExceededError(
            f"{exc} (max_inputs_per_agent)", limit="max_inputs_per_agent", max=str(exc.limit)
        ) from exc
    if kept.state is AgentState.NEEDS_INPUT:
        await inbox.resume(agents.records, agents.jobs, agent_id, kept.seq)
    return await agents.records.get(agent_id)
