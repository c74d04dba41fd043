"""Chaos tests for Hubspoke (issue #5): real faults against a real federation, then a checker.

``scripts/chaos`` runs them; ``tests/chaos/test_chaos_reduced.py`` runs the reduced scale.
Modules: ``cluster`` (processes), ``proxy`` (a cuttable TCP link), ``faults``,
``scenarios``, ``ledger`` (the checker), ``report``.
"""
