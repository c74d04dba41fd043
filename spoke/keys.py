"""Every Redis key a spoke uses, under one prefix ``federation:{spoke}:``.

bullmq's own keys live under the same prefix (``federation:{spoke}:agents:*``) because the
queue is created with ``prefix=federation:{spoke}`` and name ``agents``.
Keys with a TTL: nonces, and finished agents' records and streams (set by the sweeper).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

QUEUE_NAME = "agents"


@dataclass(frozen=True, slots=True)
class SpokeKeys:
    spoke: str

    @property
    def prefix(self) -> str:
        return f"federation:{self.spoke}"

    @property
    def schema(self) -> str:
        """The schema version of this site's data (``hubspoke.version.SPOKE_SCHEMA_VERSION``)."""
        return f"{self.prefix}:schema"

    def nonce(self, issuer: str, nonce_hex: str) -> str:
        return f"{self.prefix}:nonce:{issuer}:{nonce_hex}"

    def agent(self, agent_id: str) -> str:
        return f"{self.prefix}:agent:{agent_id}"

    def signed(self, agent_id: str) -> str:
        """String: the spawn's signed envelope and the hub's relay as received, stored once
        outside the record so that the record hash keeps Redis's compact encoding:
        ``<length of the envelope>:<envelope><relay>`` (spoke/records.py ``signed_copies``)."""
        return f"{self.prefix}:signed:{agent_id}"

    def events(self, agent_id: str) -> str:
        return f"{self.prefix}:events:{agent_id}"

    @property
    def agent_index(self) -> str:
        """Sorted set of agent ids scored by create time (ms), for listing newest first."""
        return f"{self.prefix}:agents-by-time"

    @property
    def waiting(self) -> str:
        """Sorted set (every score 0) of ``waiting_member``: one per agent that waits (QUEUED
        or RETRYING), kept by the scripts that change state; it counts each principal's
        waiting agents for its quota (``waiting_range``)."""
        return f"{self.prefix}:waiting"

    @property
    def start_deadlines(self) -> str:
        """Sorted set of agent ids scored by their start deadline (``expire_ms``), added when
        the record is stored (or replayed) with one; the sweeper takes the due ones from it
        instead of scanning every record (spoke/sweeper.py)."""
        return f"{self.prefix}:start-deadlines"

    @property
    def job_pending(self) -> str:
        """Sorted set of the two-step writes in flight ("record written, job pending"):
        ``<agent id>:<token>`` scored by when it was marked (spoke/job_pending.py); spoked's
        start-up scan reads only these, not the backlog (spoke/start_up_scan.py)."""
        return f"{self.prefix}:job-pending"

    @property
    def full_scan_owed(self) -> str:
        """Present while the one-time scan of every record a schema upgrade to 2 asks for
        (quota recount, start deadlines, orphaned jobs) has not finished (spoke/schema.py)."""
        return f"{self.prefix}:full-scan-owed"

    @property
    def verifying(self) -> str:
        """Sorted set of NEEDS_VERIFICATION agent ids scored by their verification deadline
        (ms), kept by the scripts that change state; the sweeper fails those past it."""
        return f"{self.prefix}:verifying"

    def inbox(self, agent_id: str) -> str:
        """List of the messages ``hubctl send`` kept for an agent, oldest first, each JSON with
        its signed envelope (spoke/inbox.py); message ``seq`` N is element N-1."""
        return f"{self.prefix}:inbox:{agent_id}"

    def inbox_ids(self, agent_id: str) -> str:
        """Hash of the command ids of an agent's messages to ``seq/digest`` (retries)."""
        return f"{self.prefix}:inbox-ids:{agent_id}"

    @staticmethod
    def waiting_member(issuer: str, agent_id: str) -> str:
        """``issuer:agent_id``: neither a principal's name nor an agent id contains ``:``."""
        return f"{issuer}:{agent_id}"

    @staticmethod
    def waiting_range(issuer: str) -> tuple[str, str]:
        """The ZLEXCOUNT bounds of ``issuer``'s members (``;`` follows ``:``)."""
        return f"[{issuer}:", f"({issuer};"

    def dedupe(self, owner: str, key: str) -> str:
        """The claim of a dedupe key by an owner: the id of its agent (spoke/dedupe.py). Named
        by a hash, so neither the principal's name nor the key can reach another key."""
        digest = hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()[:40]
        return f"{self.prefix}:dedupe:{digest}"

    @property
    def feed(self) -> str:
        """The event feed: one stream of every agent's state changes, ids ``n-0`` from a
        counter of its own (spoke/feed.py; written by records_lua.FEED, which derives it)."""
        return f"{self.prefix}:feed"

    @property
    def feed_meta(self) -> str:
        """Hash of the feed's counter (``seq``) and cap (``cap``)."""
        return f"{self.prefix}:feed-meta"

    def hook_cursor(self, hook: str) -> str:
        """Where a notification hook's runner stands in the feed (spoke/hooks.py)."""
        return f"{self.prefix}:hook-cursor:{hook}"

    def hook_lease(self, hook: str) -> str:
        """Which spoked process runs a hook now (a lease that expires, spoke/hooks.py)."""
        return f"{self.prefix}:hook-lease:{hook}"

    @property
    def kill_channel(self) -> str:
        """Pub/sub channel that carries kill requests to whichever worker holds the agent."""
        return f"{self.prefix}:kill"

    def watch_wake(self, reader: str) -> str:
        """A stream one process's watch reader also reads: an entry wakes it to read a newly
        watched agent's stream too (it expires while nobody starts watching)."""
        return f"{self.prefix}:watch-wake:{reader}"

    def rate(self, principal: str) -> str:
        """Token bucket of one principal's request rate (expires when full again)."""
        return f"{self.prefix}:rate:{principal}"

    def profile_slots(self, profile: str) -> str:
        """Sorted set of agent ids running a profile, scored by lease expiry (ms)."""
        return f"{self.prefix}:slots:{profile}"

    @property
    def workers(self) -> str:
        """Hash of live worker ids to their heartbeat (ms), for recovery."""
        return f"{self.prefix}:workers"

    def bull(self, name: str) -> str:
        """A key of bullmq's own for this spoke's queue: ``wait``, ``delayed``, a job id…"""
        return f"{self.prefix}:{QUEUE_NAME}:{name}"

    @staticmethod
    def job_id(agent_id: str) -> str:
        # bullmq confuses integer-looking ids with its own counter (PITFALLS): always prefix.
        return f"cmd-{agent_id}"

    @staticmethod
    def replay_job_id(agent_id: str, replay: int) -> str:
        """The bullmq job of an agent's ``replay``-th replay.

        Not ``cmd-{id}-r{n}``: that is the first job of the agent whose id ends in ``-r{n}``
        (a replay of ``x`` found ``cmd-x-r1``, agent ``x-r1``'s, still in the completed set;
        bullmq ignored the add and ``x`` stayed QUEUED). First jobs start ``cmd-``, replays
        ``replay{n}-``, and the id follows them whole, so no two agents' jobs share an id.
        """
        return f"replay{replay}-{agent_id}"
