"""Connect link mode in the harness: the environment that turns a federation's spokes into
spokes that dial their hub (docs/protocol.md "Connect mode"), with no listening socket."""

from __future__ import annotations

from collections.abc import Sequence

from ._plan import FederationPlan

__all__ = ["connect_env"]


def connect_env(
    plan: FederationPlan,
    spokes: Sequence[str] | None = None,
    *,
    heartbeat_interval_s: float = 1.0,
    hub_addresses: Sequence[str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """``(hub_env, spoke_env)`` for a :class:`Federation` whose ``spokes`` (all by default)
    link in connect mode: the hub lists them as ``name=connect`` (``HUB_SPOKES``, which
    replaces the config's spokes, so list every spoke the hub should know), the spokeds dial
    the plan's hub address (or ``hub_addresses``, several hubds of the hub, tried in turn:
    pass the others' listen addresses to :meth:`Federation.start_hub`) and heartbeat every
    ``heartbeat_interval_s``.

    Example::

        fed = Federation(tmp_path, ["spoke-1"])
        hub_env, spoke_env = connect_env(fed, heartbeat_interval_s=0.5)
        fed.hub_env.update(hub_env)
        fed.spoke_env.update(spoke_env)
        await fed.start()
    """
    names = list(plan.spoke_names if spokes is None else spokes)
    hub_env = {"HUB_SPOKES": ",".join(f"{n}=connect" for n in names)}
    spoke_env = {
        "SPOKE_LINK": "connect",
        "SPOKE_HUB_ADDRESS": ",".join(hub_addresses or [plan.hub_address]),
        "SPOKE_HUB_NAME": plan.hub_name,
        "SPOKE_HEARTBEAT_INTERVAL_S": repr(heartbeat_interval_s),
        "SPOKE_LINK_RECONNECT_MIN_S": "0.2",
        "SPOKE_LINK_RECONNECT_MAX_S": "2.0",
    }
    return hub_env, spoke_env
