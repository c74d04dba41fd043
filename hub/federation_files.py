"""Write a whole federation's keys and config files into one directory.

Used by the dev federation (``hubctl dev``) and by the tests. Layout::

    DIR/keys/{hub,spoke-N,operator}.key|.pub   Ed25519 keypairs (private keys mode 0600)
    DIR/trust.toml                              every peer with its role; all processes share it
    DIR/hub.toml                                hubd's config, listing every spoke
    DIR/{spoke}.toml                            spoked's config for each spoke
    DIR/hubctl.toml                             hubctl's config, signing as ``operator``
    DIR/tls/ca.crt|.key, NAME.crt|.tls.key      with ``tls=True``: transport CA and certificates

Paths inside the files are relative to DIR, so the directory can be moved as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hubspoke import keys, policy
from hubspoke import tls as stls

__all__ = ["OPERATOR", "FederationFiles", "SpokeSpec", "write_federation"]

OPERATOR: Final = "operator"
"""The client principal the generated hubctl config signs as."""

SpokeSpec = tuple[str, str, str]
"""``(name, listen address, redis_url)`` of one spoke."""

_SPOKE_PROFILES: Final = """
[profiles.synthetic]

[profiles.shell]
argv = ["sh", "-c", "{task}"]
task_on_stdin = false
unsafe = true
"""


@dataclass(frozen=True, slots=True)
class FederationFiles:
    """Where :func:`write_federation` put everything."""

    root: Path
    keys_dir: Path
    trust_file: Path
    hub_config: Path
    spoke_configs: Mapping[str, Path]
    """Spoke name → its spoked TOML file, in the order given."""
    hubctl_config: Path
    hub_name: str
    hub_address: str
    tls_dir: Path | None = None
    """With ``tls=True``: the CA and every peer's certificate (every config has ``[tls]``)."""


def _s(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def write_federation(
    root: Path,
    spokes: Sequence[SpokeSpec],
    hub_address: str,
    hub_redis_url: str,
    *,
    hub_name: str = "hub",
    spoke_profiles: str = _SPOKE_PROFILES,
    tls: bool = False,
) -> FederationFiles:
    """Generate keys for the hub, each spoke and ``operator``, and write every config file.

    Args:
        root: the directory to fill (created if needed). Existing key files are never
            overwritten: writing twice into one directory raises ``FileExistsError``.
        spokes: ``(name, listen address, redis_url)`` per spoke.
        hub_address: where hubd listens and hubctl dials.
        hub_redis_url: the hub's Redis.
        hub_name: the hub's peer name.
        spoke_profiles: the ``[profiles.*]`` tables appended to every spoke config.
        tls: also create a transport CA and a certificate per peer in ``DIR/tls`` (SANs:
            the name, ``localhost`` and ``127.0.0.1``) and a ``[tls]`` table in every config.
            Without it the federation speaks plaintext, so every address must be loopback.
    """
    root.mkdir(parents=True, exist_ok=True)
    keys_dir = root / "keys"
    names = [hub_name, *(s[0] for s in spokes)]
    if len(set(names)) != len(names) or OPERATOR in names:
        raise ValueError(f"peer names must be distinct and not {OPERATOR!r}: {names}")
    roles = {hub_name: "hub", OPERATOR: "client", **{s[0]: "spoke" for s in spokes}}
    public: dict[str, str] = {}
    for name in roles:
        key = keys.generate(name)
        keys.write_keypair(key, keys_dir)
        public[name] = keys.encode_public(key.public)

    trust_file = root / "trust.toml"
    trust_file.write_text(
        "# Every peer of this federation; hubd, spoked and hubctl all read this file.\n"
        + "".join(
            f"\n[[peer]]\nname = {_s(n)}\nrole = {_s(r)}\nkeys = [{_s(public[n])}]\n"
            for n, r in roles.items()
        )
    )

    policy_file = root / "policy.toml"
    if not policy_file.exists():  # an operator's edits survive a rewrite of the configs
        policy_file.write_text(policy.ALLOW_OPERATOR_EVERYTHING)

    tls_dir = root / "tls" if tls else None
    if tls_dir is not None:
        local = ["localhost", "127.0.0.1"]
        stls.init_pki(tls_dir, [(n, [] if n == OPERATOR else local) for n in roles])

    def tls_section(name: str) -> str:
        if tls_dir is None:
            return ""
        return (
            "\n[tls]\n"
            f"cert_file = {_s(f'tls/{name}.crt')}\n"
            f"key_file = {_s(f'tls/{name}.tls.key')}\n"
            'ca_file = "tls/ca.crt"\n'
        )

    hub_config = root / "hub.toml"
    hub_config.write_text(
        f"name = {_s(hub_name)}\n"
        f"listen = {_s(hub_address)}\n"
        f"key_file = {_s(f'keys/{hub_name}.key')}\n"
        'trust_file = "trust.toml"\n'
        'policy_file = "policy.toml"\n'
        f"redis_url = {_s(hub_redis_url)}\n"
        + "".join(f"\n[[spokes]]\nname = {_s(n)}\naddress = {_s(addr)}\n" for n, addr, _ in spokes)
        + tls_section(hub_name)
    )

    spoke_configs: dict[str, Path] = {}
    for name, address, redis_url in spokes:
        path = root / f"{name}.toml"
        path.write_text(
            f"name = {_s(name)}\n"
            f"listen = {_s(address)}\n"
            f"key_file = {_s(f'keys/{name}.key')}\n"
            'trust_file = "trust.toml"\n'
            'policy_file = "policy.toml"\n'
            f"redis_url = {_s(redis_url)}\n" + spoke_profiles + tls_section(name)
        )
        spoke_configs[name] = path

    hubctl_config = root / "hubctl.toml"
    hubctl_config.write_text(
        f"hub = {_s(hub_address)}\n"
        f"hub_name = {_s(hub_name)}\n"
        f"principal = {_s(OPERATOR)}\n"
        f"key_file = {_s(f'keys/{OPERATOR}.key')}\n"
        'trust_file = "trust.toml"\n' + tls_section(OPERATOR)
    )
    return FederationFiles(
        root=root,
        keys_dir=keys_dir,
        trust_file=trust_file,
        hub_config=hub_config,
        spoke_configs=spoke_configs,
        hubctl_config=hubctl_config,
        hub_name=hub_name,
        hub_address=hub_address,
        tls_dir=tls_dir,
    )
