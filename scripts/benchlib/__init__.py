"""Hubspoke's benchmark harness (issue #5): floors, our verbs, rivals and backlog scale.

``scripts/bench.py`` is the entry point. Modules:

* ``procs``: the CPU time and memory of any process
* ``cluster``: the federation under test, from the harness (``hubspoke.testing``)
* ``harness``: arms, interleaved rounds, latency/throughput/CPU sampling, aggregation
* ``floors``, ``ours``, ``rivals``: the arms; ``scale``: the backlog phase
* ``report``: ``docs/benchmarks.md``, PNG plots, environment
"""

from __future__ import annotations

__all__: list[str] = []
