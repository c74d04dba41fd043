"""The adversarial volume suite (issue #4): ``scripts/fuzz`` and ``tests/security``.

Modules:

* ``federation``: a real hub and spoke in this process (HubApp, SpokeApp) on loopback, with
  a private redis-server, and restarts on the same ports and Redis.
* ``endpoints``: every RPC of HubService and SpokeService, read from the generated
  descriptors, so a new RPC is covered without touching this package.
* ``forge``: builds signed, forged, expired, relayed ... requests as raw bytes.
* ``classes``: the input classes, each with the statuses docs/protocol.md promises; their
  generators in ``classes_unsigned`` (broken bytes and signatures) and ``classes_signed``
  (signed but refused, replays, hops).
* ``runner``: sends probes with bounded concurrency and counts what came back.
* ``tenants``: a second hub and spoke with limited principals (alice, bob, mallory), one
  profile per task placement kind, low watch caps and a per-principal quota.
* ``isolation``: the classes between principals (issue 9) against ``tenants``: every verb on
  another's agents, watch floods, argv injection, Redis tampering, quota exhaustion.
  One module per class family: ``isolation_access``, ``isolation_watch``,
  ``isolation_argv``, ``isolation_records``; ``isolation_sender`` sends as any principal.
* ``run``: one whole run (every class, memory, health, queued agents) → summary JSON.
* ``skew``: the one positive class, clock skew inside the window (``within_skew``).
"""
