"""A spawn in one Redis round trip (issue 13): the command's admission (its client's rate
token and nonce claims, shared/admission.py), its record and its bullmq job, in one script
(spoke/spawn_lua.py ``admit_create_and_add``).

The service checks everything it can without Redis first (signature, audience, window,
start deadline, then the policy and the body's values); a command refused there still runs
its admission alone before the refusal is answered, so a refused command spends a rate
token and claims its nonce exactly as before, and an admission refusal still comes first.
Only a spawn that needs nothing read before it is stored takes this path
(``AgentQueue.one_trip``: due now, no approvals, no dedupe key, not a dry run); the others
are admitted first and created as before.
"""

from __future__ import annotations

import asyncio

from hubspoke import errors

from .config import SpokeConfig
from .model import AgentRecord, SpawnRequest
from .queue import AgentQueue
from .spawn_lua import AdmissionRefusedError
from .verifier import Pending, Verifier


async def create(
    agents: AgentQueue, verifier: Verifier, pending: Pending, req: SpawnRequest, cfg: SpokeConfig
) -> AgentRecord:
    """Admit ``pending`` and store ``req`` with its job, in one script; the record (the
    stored one for a retry of the same spawn).

    Raises:
        RateLimitedError, NonceReusedError: the admission refused; nothing was stored.
        QueueError: as ``AgentQueue.create`` (the caller converts them).
    """
    try:
        # Shielded: a client that times out must not leave a half-stored spawn behind.
        rec, created = await asyncio.shield(
            agents.create(
                req,
                cfg.max_queue_depth,
                cfg.max_queued_per_principal,
                admit=verifier.admission_call(pending),
            )
        )
    except AdmissionRefusedError as exc:
        verifier.refuse(pending, exc.verdict, exc.detail)
        raise errors.BackendUnavailableError(f"unexpected admission verdict {exc.verdict}") from exc
    if created:  # for this process's worker: no read back (spoke/start_handoff.py)
        agents.jobs.handoff.put(rec, req.envelope, req.relay)
    return rec
