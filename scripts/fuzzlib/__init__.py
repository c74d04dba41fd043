"""The adversarial volume suite (issue #4): ``scripts/fuzz`` and ``tests/security``.

Modules:

* ``federation``: a real hub and spoke in this process (HubApp, SpokeApp) on loopback, with
  a private redis-server, and restarts on the same ports and Redis.
* ``endpoints``: every RPC of HubService and SpokeService, read from the generated
  descriptors, so a new RPC is covered without touching this package.
* ``forge``: builds signed, forged, expired, relayed ... requests as raw bytes.
* ``classes``: the input classes, each with the statuses docs/protocol.md promises.
* ``runner``: sends probes with bounded concurrency and counts what came back.
* ``run``: one whole run (every class, memory, health, queued agents) → summary JSON.
"""
