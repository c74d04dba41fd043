"""``hubctl init``: the files of a real hub or spoke host, in a few commands (docs/deploy.md).

On the hub's host::

    hubctl init hub --name hub --out DIR [--listen 0.0.0.0:7100] [--address HOST[:PORT]]
                    [--redis-url URL] [--operator NAME] [--data-dir DIR]

writes the hub's signing keypair, the federation's private CA and the hub's certificate,
``trust.toml`` (the hub, and the operator), a default-deny ``policy.toml``, ``hub.toml`` with
every option explained, ``hubd.service``, and with ``--operator`` the operator's keys,
certificate and ``hubctl.toml``.

On a spoke's host, then on the hub's, then on the spoke's again::

    hubctl init spoke --name build-2 --out DIR [--listen ...] [--address HOST[:PORT]] ...
    hubctl init add-spoke --hub-dir HUB_DIR build-2.request.toml
    hubctl init accept --dir DIR build-2.reply.toml

``init spoke`` writes the spoke's keys, a certificate request, ``spoke.toml``,
``spoked.service`` and ``NAME.request.toml``; ``add-spoke`` signs the request with the CA,
adds the spoke to ``trust.toml`` and ``hub.toml``, and writes ``NAME.reply.toml``;
``accept`` checks the reply and installs the certificate, the CA certificate, the trust
store and the policy (``hubspoke.hub.init_join``). No private key leaves its host, no
existing key is overwritten, and private keys are mode 0600.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = ["add_parser", "run"]

_EXIT_OK: Final = 0
_EXIT_USAGE: Final = 2
HUB_PORT: Final = 7100
SPOKE_PORT: Final = 7101
DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/0"
DEFAULT_DATA_DIR: Final = Path("/var/lib/hubspoke")


class Out(Protocol):
    json: bool

    def doc(self, value: object) -> None: ...

    def line(self, text: str) -> None: ...


class InitError(Exception):
    """A file exists, or an input is bad: the CLI exits 2 with this one-line message."""


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label must be key=value, got {text!r}")
    return key, value


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``init hub|spoke|add-spoke|accept`` on hubctl's subparsers."""
    p = sub.add_parser(
        "init",
        help="write a real hub's or spoke's keys, certificates, configs and systemd unit",
        description="Set up real hosts (docs/deploy.md): init hub on the hub's host; init "
        "spoke on a spoke's host; add-spoke on the hub's host; accept on the spoke's host.",
    )
    acts = p.add_subparsers(dest="init_action", metavar="ACTION", required=True)

    hub = acts.add_parser(
        "hub",
        help="a hub: keys, CA and certificate, trust, policy, hub.toml, hubd.service",
        parents=[common],
        epilog="example:\n  hubctl init hub --name hub --out /etc/hubspoke --address hub-host "
        "--operator alice",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _host_options(hub, HUB_PORT)
    hub.add_argument(
        "--operator",
        metavar="NAME",
        help="also make this client principal's keys, certificate and hubctl.toml, "
        "and a policy rule letting it do everything",
    )

    spoke = acts.add_parser(
        "spoke",
        help="a spoke: keys, certificate request, spoke.toml, spoked.service, NAME.request.toml",
        parents=[common],
        epilog="example:\n  hubctl init spoke --name build-2 --out /etc/hubspoke "
        "--address build-host --label pool=ci",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _host_options(spoke, SPOKE_PORT)
    spoke.add_argument(
        "--label",
        dest="labels",
        type=_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of this spoke (repeatable)",
    )

    add = acts.add_parser(
        "add-spoke",
        help="on the hub's host: sign a spoke's request, add it to trust.toml and hub.toml",
        parents=[common],
        epilog="example:\n"
        "  hubctl init add-spoke --hub-dir /etc/hubspoke /tmp/build-2.request.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument(
        "--hub-dir", type=Path, required=True, metavar="DIR", help="the directory of init hub"
    )
    add.add_argument("request", type=Path, metavar="REQUEST", help="NAME.request.toml")
    add.add_argument(
        "--reply",
        type=Path,
        metavar="FILE",
        help="where to write the reply (default: NAME.reply.toml beside REQUEST)",
    )
    add.add_argument("--days", type=int, default=825, help="certificate validity (default 825)")

    acc = acts.add_parser(
        "accept",
        help="on the spoke's host: install the hub's reply (certificate, CA, trust, policy)",
        parents=[common],
        epilog="example:\n  hubctl init accept --dir /etc/hubspoke /tmp/build-2.reply.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    acc.add_argument(
        "--dir", type=Path, required=True, metavar="DIR", help="the directory of init spoke"
    )
    acc.add_argument("reply", type=Path, metavar="REPLY", help="NAME.reply.toml")


def _host_options(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--name", required=True, help="this peer's name")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to write (/etc/hubspoke)"
    )
    p.add_argument(
        "--listen",
        default=f"0.0.0.0:{port}",
        metavar="HOST:PORT",
        help=f"host:port to serve on (default 0.0.0.0:{port})",
    )
    p.add_argument(
        "--address",
        metavar="HOST[:PORT]",
        help="how other hosts reach this one (default: this host's name; port from --listen)",
    )
    p.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS,
        metavar="URL",
        help=f"this host's Redis (default {DEFAULT_REDIS})",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=DEFAULT_DATA_DIR,
        help=f"the one directory the systemd unit may write (default {DEFAULT_DATA_DIR})",
    )


def run(args: argparse.Namespace, out: Out) -> int:
    """Do one ``init`` action; ``Error: ...`` on stderr and exit 2 when it cannot."""
    from hubspoke.errors import ConfigError  # lazily: the other verbs need none of this

    action = {"hub": _hub, "spoke": _spoke, "add-spoke": _add_spoke, "accept": _accept}
    try:
        report = action[args.init_action](args)
    except (InitError, ConfigError, FileExistsError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    if out.json:
        out.doc({"wrote": [str(p) for p in report.wrote], "next": list(report.next)})
        return _EXIT_OK
    for path in report.wrote:
        out.line(f"wrote {path}")
    if report.next:
        out.line("")
        out.line("next:")
        for step in report.next:
            out.line(f"  {step}")
    return _EXIT_OK


@dataclass(frozen=True, slots=True)
class _Report:
    wrote: Sequence[Path]
    next: Sequence[str]


# -- helpers ----------------------------------------------------------------------------------


def _port(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InitError(f"--listen must be host:port, got {listen!r}")
    return port


def _address(address: str | None, listen: str) -> str:
    """``host:port`` others dial: ``--address`` (port from ``--listen`` if it has none)."""
    port = _port(listen)
    host = address or socket.getfqdn()
    if host.startswith("["):  # [v6] or [v6]:port
        return host if "]:" in host else f"{host}:{port}"
    return host if host.count(":") == 1 else f"{host}:{port}"


def _refuse_existing(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists():
            what = "a key" if path.suffix == ".key" else "it"
            raise InitError(f"{path} already exists; refusing to overwrite {what}")


def _write_secret(path: Path, data: bytes) -> None:
    # O_EXCL: never overwrite; 0600 from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside.absolute())
    return shutil.which(name) or f"/usr/local/bin/{name}"


def _check_name(name: str) -> None:
    from . import init_join

    if not init_join.NAME_RE.fullmatch(name) or name == "ca":
        raise InitError(
            f"--name {name!r} must be 1-63 characters of A-Z a-z 0-9 . _ - starting "
            "alphanumeric, and not 'ca'"
        )


# -- init hub ---------------------------------------------------------------------------------


def _hub(args: argparse.Namespace) -> _Report:
    from hubspoke import keys, tls

    from . import init_templates as t

    name: str = args.name
    operator: str | None = args.operator
    _check_name(name)
    if operator is not None:
        _check_name(operator)
        if operator == name:
            raise InitError("--operator must differ from --name")
    root: Path = args.out.absolute()
    address = _address(args.address, args.listen)
    peers = [name] if operator is None else [name, operator]
    files = [root / f for f in ("hub.toml", "trust.toml", "policy.toml", "hubd.service")]
    files += [root / "keys" / f"{p}.key" for p in peers] + [
        root / "keys" / f"{p}.pub" for p in peers
    ]
    files += [root / "tls" / f for f in ("ca.crt", "ca.key")]
    files += [root / "tls" / f"{p}.{s}" for p in peers for s in ("crt", "tls.key")]
    if operator is not None:
        files.append(root / "hubctl.toml")
    _refuse_existing(files)

    public: dict[str, str] = {}
    for peer in peers:
        key = keys.generate(peer)
        keys.write_keypair(key, root / "keys")
        public[peer] = keys.encode_public(key.public)
    host = address.rpartition(":")[0].strip("[]")
    hub_sans = [host] if host and host != name else []
    try:
        tls.init_pki(root / "tls", [(name, hub_sans)] + [(p, []) for p in peers[1:]])
    except tls.TlsError as exc:
        raise InitError(str(exc)) from exc

    trust = t.trust_head() + t.trust_peer(name, "hub", public[name], "The hub.")
    if operator is not None:
        trust += t.trust_peer(operator, "client", public[operator], "The operator (hubctl).")
    (root / "trust.toml").write_text(trust)
    (root / "policy.toml").write_text(t.policy_toml(operator))
    (root / "hub.toml").write_text(t.hub_toml(name, args.listen, args.redis_url))
    unit = t.Unit(
        description=f"Hubspoke hub {name} (hubd)",
        exec_start=[_binary("hubd"), "--config", str(root / "hub.toml")],
        read_write=[args.data_dir],
        note="hubd keeps its state in Redis and writes no file of its own.",
    )
    (root / "hubd.service").write_text(t.systemd_unit(unit))
    if operator is not None:
        (root / "hubctl.toml").write_text(t.hubctl_toml(address, name, operator))

    steps = [
        f"start Redis, then hubd: hubd --config {root / 'hub.toml'} "
        f"(or systemd: {root / 'hubd.service'})",
        f"on each spoke's host: hubctl init spoke --name NAME --out DIR --address HOST; "
        f"then here: hubctl init add-spoke --hub-dir {root} NAME.request.toml",
    ]
    if operator is not None:
        steps.append(f"check: hubctl --config {root / 'hubctl.toml'} spokes")
    return _Report(files, steps)


# -- init spoke -------------------------------------------------------------------------------


def _spoke(args: argparse.Namespace) -> _Report:
    from cryptography.hazmat.primitives import serialization

    from hubspoke import keys

    from . import init_join
    from . import init_templates as t

    name: str = args.name
    _check_name(name)
    root: Path = args.out.absolute()
    address = _address(args.address, args.listen)
    labels = dict(args.labels)
    request_file = root / f"{name}.request.toml"
    files = [
        root / "keys" / f"{name}.key",
        root / "keys" / f"{name}.pub",
        root / "tls" / f"{name}.tls.key",
        root / "spoke.toml",
        root / "spoked.service",
        request_file,
    ]
    _refuse_existing([*files, root / "tls" / f"{name}.crt"])

    key = keys.generate(name)
    keys.write_keypair(key, root / "keys")
    tls_key, csr = init_join.make_csr(name)
    (root / "tls").mkdir(parents=True, exist_ok=True)
    pem = tls_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_secret(root / "tls" / f"{name}.tls.key", pem)
    data_dir: Path = args.data_dir
    (root / "spoke.toml").write_text(
        t.spoke_toml(name, args.listen, args.redis_url, labels, data_dir)
    )
    unit = t.Unit(
        description=f"Hubspoke spoke {name} (spoked)",
        exec_start=[_binary("spoked"), "--config", str(root / "spoke.toml")],
        read_write=[data_dir],
        note=(
            "Agents run as this user, in this sandbox (add their working directories to\n"
            "ReadWritePaths; PrivateDevices and ProtectHome apply to them too), each under a\n"
            "supervisor of its own (spoke/supervisor.sh) that owns its output and exit files.\n"
            "KillMode=process: stopping or restarting the unit signals spoked only, so running\n"
            "agents keep running and the next spoked re-attaches to them (an upgrade loses\n"
            "none; docs/reliability.md). `systemctl kill spoked` still reaches them all.\n"
            "With supervise = false in spoke.toml, agents would die with spoked instead:\n"
            "remove KillMode then. Per-agent cgroups need Delegate=yes and\n"
            "ProtectControlGroups=no (docs/deploy.md); without, a kill reaches the agent's\n"
            "process group."
        ),
        kill_mode="process",
    )
    (root / "spoked.service").write_text(t.systemd_unit(unit))
    request = init_join.JoinRequest(
        name=name,
        public_key=keys.encode_public(key.public),
        address=address,
        csr_pem=csr,
        labels=labels,
    )
    request_file.write_text(request.to_toml())
    steps = [
        f"copy {request_file} to the hub's host and run there: "
        f"hubctl init add-spoke --hub-dir HUB_DIR {request_file.name}",
        f"copy the {name}.reply.toml it writes back here and run: "
        f"hubctl init accept --dir {root} {name}.reply.toml",
    ]
    return _Report(files, steps)


# -- init add-spoke (hub side) ----------------------------------------------------------------


def _hub_name(hub_toml: Path) -> str:
    try:
        raw = tomllib.loads(hub_toml.read_text())
    except FileNotFoundError as exc:
        raise InitError(f"{hub_toml} not found: --hub-dir must be a directory of init hub") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InitError(f"{hub_toml} is not valid TOML: {exc}") from exc
    name = raw.get("name", "hub")
    return name if isinstance(name, str) else "hub"


def _add_spoke(args: argparse.Namespace) -> _Report:
    from hubspoke import trust

    from . import config, init_join
    from . import init_templates as t

    root: Path = args.hub_dir.absolute()
    hub_toml, trust_file, policy_file = (
        root / "hub.toml",
        root / "trust.toml",
        root / "policy.toml",
    )
    hub = _hub_name(hub_toml)
    request = init_join.JoinRequest.from_file(args.request)
    trust_text = trust_file.read_text()
    known = trust.TrustStore.from_mapping(tomllib.loads(trust_text), str(trust_file))
    if request.name == hub or known.role_of(request.name) is not None:
        raise InitError(f"{request.name!r} is already a peer in {trust_file}")
    cfg = config.HubConfig.load(hub_toml, {})
    if cfg.spoke(request.name) is not None:
        raise InitError(f"{request.name!r} is already a spoke in {hub_toml}")
    if args.days < 1:
        raise InitError("--days must be at least 1")
    cert_pem, ca_pem = init_join.sign_csr(
        request, root / "tls" / "ca.crt", root / "tls" / "ca.key", args.days
    )

    new_trust = trust_text + t.trust_peer(
        request.name, "spoke", request.public_key, "A spoke, added by `hubctl init add-spoke`."
    )
    trust.TrustStore.from_mapping(tomllib.loads(new_trust), str(trust_file))  # still valid
    new_hub = hub_toml.read_text() + t.spoke_entry(request.name, request.address, request.labels)
    staged = root / ".hub.toml.check"
    staged.write_text(new_hub)
    try:
        config.HubConfig.load(staged, {})  # still valid, resolved as hub.toml would be
    finally:
        staged.unlink()
    _replace_text(trust_file, new_trust)
    _replace_text(hub_toml, new_hub)

    reply = init_join.JoinReply(
        name=request.name,
        hub=hub,
        cert_pem=cert_pem,
        ca_pem=ca_pem,
        trust_toml=new_trust,
        policy_toml=policy_file.read_text(),
    )
    reply_file: Path = args.reply or args.request.absolute().with_name(f"{request.name}.reply.toml")
    reply_file.write_text(reply.to_toml())
    steps = [
        "restart hubd to dial the new spoke (systemctl restart hubd); trust.toml is re-read "
        "by itself",
        f"copy {reply_file} to {request.name}'s host and run there: "
        f"hubctl init accept --dir SPOKE_DIR {reply_file.name}",
        "copy trust.toml to every other host whose hubctl or spoked must know the new spoke",
    ]
    return _Report([trust_file, hub_toml, reply_file], steps)


# -- init accept (spoke side) -----------------------------------------------------------------


def _accept(args: argparse.Namespace) -> _Report:
    from hubspoke import keys, policy, trust

    from . import init_join

    root: Path = args.dir.absolute()
    spoke_toml = root / "spoke.toml"
    try:
        name = tomllib.loads(spoke_toml.read_text()).get("name")
    except FileNotFoundError as exc:
        raise InitError(f"{spoke_toml} not found: --dir must be a directory of init spoke") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InitError(f"{spoke_toml} is not valid TOML: {exc}") from exc
    reply = init_join.JoinReply.from_file(args.reply)
    if reply.name != name:
        raise InitError(f"{args.reply} is for {reply.name!r}, but {spoke_toml} is {name!r}")
    tls_key = root / "tls" / f"{reply.name}.tls.key"
    init_join.verify_leaf(reply.cert_pem, reply.ca_pem, tls_key, reply.name)
    signing = keys.load_private(root / "keys" / f"{reply.name}.key", reply.name)
    store = trust.TrustStore.from_mapping(tomllib.loads(reply.trust_toml), f"{args.reply}: trust")
    fingerprint = keys.fingerprint(signing.public)
    if store.role_of(reply.name) is not trust.Role.SPOKE or fingerprint not in {
        k.fingerprint for k in store.keys_of(reply.name)
    }:
        raise InitError(f"the reply's trust store does not hold this spoke's key ({fingerprint})")
    if store.role_of(reply.hub) is not trust.Role.HUB:
        raise InitError(f"the reply's trust store does not name the hub {reply.hub!r}")
    policy.Policy.from_mapping(tomllib.loads(reply.policy_toml), f"{args.reply}: policy")

    wrote = [root / "tls" / f"{reply.name}.crt", root / "tls" / "ca.crt", root / "trust.toml"]
    _replace_text(wrote[0], reply.cert_pem)
    _replace_text(wrote[1], reply.ca_pem)
    _replace_text(wrote[2], reply.trust_toml)
    policy_file = root / "policy.toml"
    kept = policy_file.exists()
    if not kept:  # a spoke's own policy edits survive a second accept
        policy_file.write_text(reply.policy_toml)
        wrote.append(policy_file)
    steps = [
        f"start Redis, then spoked: spoked --config {spoke_toml} "
        f"(or systemd: {root / 'spoked.service'})",
        "on the hub's host, after restarting hubd: hubctl spokes",
    ]
    if kept:
        steps.insert(0, f"kept the existing {policy_file}; the reply's policy was not installed")
    return _Report(wrote, steps)
