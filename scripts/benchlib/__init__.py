"""Hubspoke's benchmark harness (issue #5): floors, our verbs, rivals and backlog scale.

``scripts/bench.py`` is the entry point. Modules:

* ``procs``: child processes (spoked, hubd, redis-server, echo servers) and their CPU time
* ``cluster``: the federation under test, built from ``write_federation`` configs
* ``harness``: arms, interleaved rounds, latency/throughput/CPU sampling, aggregation
* ``floors``, ``ours``, ``rivals``: the arms; ``scale``: the backlog phase
* ``report``: ``docs/benchmarks.md``, PNG plots, environment
"""

from __future__ import annotations

__all__: list[str] = []
