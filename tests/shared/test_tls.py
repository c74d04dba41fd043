"""Transport TLS: the CA and leaves ``init_pki`` writes, credentials, the plaintext rule, config."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from hubspoke import client as hc
from hubspoke import grpc as sgrpc
from hubspoke import tls
from hubspoke.grpc import channel
from hubspoke.hub import cli, federation_files
from hubspoke.hub.config import HubConfig, HubConfigError
from hubspoke.spoke.config import SpokeConfig, SpokeConfigError

NAMES = [("hub", ["localhost", "127.0.0.1"]), ("spoke-1", []), ("operator", [])]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> tls.PkiFiles:
    return tls.init_pki(tmp_path / "tls", NAMES)


# -- init_pki ---------------------------------------------------------------------------------


def test_files_and_permissions(pki: tls.PkiFiles) -> None:
    root = pki.ca_cert.parent
    assert sorted(p.name for p in root.iterdir()) == [
        "ca.crt",
        "ca.key",
        "hub.crt",
        "hub.tls.key",
        "operator.crt",
        "operator.tls.key",
        "spoke-1.crt",
        "spoke-1.tls.key",
    ]
    assert pki.ca_created
    assert mode(pki.ca_key) == 0o600
    for leaf in pki.leaves.values():
        assert mode(leaf.key_file) == 0o600
        assert mode(leaf.cert_file) & 0o077 == 0o044  # certificates are public
    assert list(pki.leaves) == ["hub", "spoke-1", "operator"]
    assert pki.leaves["hub"].sans == ("hub", "localhost", "127.0.0.1")


def test_ca_and_leaves_are_ecdsa_p256_with_the_right_extensions(pki: tls.PkiFiles) -> None:
    ca = cert(pki.ca_cert)
    assert ca.subject == ca.issuer
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    hub = cert(pki.leaves["hub"].cert_file)
    for c in (ca, hub):
        public = c.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
    assert not hub.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = hub.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cn = hub.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "hub"
    san = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hub", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    key = serialization.load_pem_private_key(pki.leaves["hub"].key_file.read_bytes(), None)
    assert key.public_key() == hub.public_key()


def test_chain_verifies_as_server_and_as_client(pki: tls.PkiFiles) -> None:
    store = verification.Store([cert(pki.ca_cert)])
    now = dt.datetime.now(dt.UTC)
    builder = verification.PolicyBuilder().store(store).time(now)
    hub = cert(pki.leaves["hub"].cert_file)
    for name in (x509.DNSName("hub"), x509.DNSName("localhost")):
        chain = builder.build_server_verifier(name).verify(hub, [])
        assert chain[-1] == cert(pki.ca_cert)
    builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1"))).verify(hub, [])
    with pytest.raises(verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("spoke-1")).verify(hub, [])
    verified = builder.build_client_verifier().verify(cert(pki.leaves["operator"].cert_file), [])
    assert verified.subjects is not None
    assert x509.DNSName("operator") in verified.subjects


def test_an_existing_ca_is_reused_and_nothing_is_overwritten(pki: tls.PkiFiles) -> None:
    root = pki.ca_cert.parent
    ca_before = pki.ca_cert.read_bytes()
    more = tls.init_pki(root, [("spoke-2", ["::1"])])
    assert not more.ca_created
    assert pki.ca_cert.read_bytes() == ca_before
    store = verification.Store([cert(pki.ca_cert)])
    verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("spoke-2")).verify(
        cert(more.leaves["spoke-2"].cert_file), []
    )
    with pytest.raises(FileExistsError):
        tls.init_pki(root, [("spoke-3", []), ("hub", [])])
    assert not (root / "spoke-3.crt").exists()  # all or nothing


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    tls.init_pki(tmp_path, [("hub", [])])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(tls.TlsError, match="half a CA"):
        tls.init_pki(tmp_path, [("spoke-1", [])])


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ([("a b", [])], "must be 1-63"),
        ([("ca", [])], "not 'ca'"),
        ([("x", []), ("x", [])], "twice"),
        ([("x", ["has space"])], "SAN"),
        ([("x", ["ünï"])], "SAN"),
    ],
)
def test_bad_names_and_sans(tmp_path: Path, names: list[tuple[str, list[str]]], match: str) -> None:
    with pytest.raises(tls.TlsError, match=match):
        tls.init_pki(tmp_path, names)
    assert not (tmp_path / "ca.key").exists()


# -- credentials ------------------------------------------------------------------------------


def test_credentials_build_from_the_files(pki: tls.PkiFiles) -> None:
    cfg = pki.tls_config("hub")
    assert tls.server_credentials(cfg) is not None
    assert tls.channel_credentials(cfg) is not None
    assert tls.server_credentials(pki.tls_config("hub", require_client_cert=False)) is not None


def test_a_key_others_can_read_is_refused(pki: tls.PkiFiles) -> None:
    cfg = pki.tls_config("hub")
    cfg.key_file.chmod(0o640)
    for make in (tls.server_credentials, tls.channel_credentials):
        with pytest.raises(tls.TlsError, match="chmod 600"):
            make(cfg)


def test_wrong_or_unusable_material_is_refused(pki: tls.PkiFiles, tmp_path: Path) -> None:
    hub = pki.tls_config("hub")
    mismatched = tls.TlsConfig(hub.cert_file, pki.leaves["operator"].key_file, hub.ca_file)
    with pytest.raises(tls.TlsError, match="does not match"):
        tls.channel_credentials(mismatched)
    ed = tmp_path / "ed.key"
    ed.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ed.chmod(0o600)
    with pytest.raises(tls.TlsError, match="ECDSA"):
        tls.server_credentials(tls.TlsConfig(hub.cert_file, ed, hub.ca_file))
    with pytest.raises(tls.TlsError, match="not found"):
        tls.server_credentials(tls.TlsConfig(tmp_path / "none.crt", hub.key_file, hub.ca_file))


# -- plaintext only on loopback ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:7100", True),
        ("127.9.8.7:1", True),
        ("localhost:7100", True),
        ("LOCALHOST", True),
        ("[::1]:7100", True),
        ("::1", True),
        ("0.0.0.0:7100", False),
        ("[::]:7100", False),
        (":7100", False),
        ("10.0.0.2:7101", False),
        ("hub.example.com:443", False),
        ("localhost.example.com:1", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert tls.is_loopback(address) is loopback


def test_require_loopback_message() -> None:
    tls.require_loopback("listen", "127.0.0.1:0")
    with pytest.raises(tls.TlsError) as info:
        tls.require_loopback("listen", "0.0.0.0:7100")
    assert str(info.value) == (
        "listen 0.0.0.0:7100: plaintext is allowed only on loopback; configure [tls]"
    )


def test_hubctl_refuses_plaintext_to_a_remote_hub(tmp_path: Path) -> None:
    files = federation_files.write_federation(tmp_path, [], "127.0.0.1:7100", "redis://x/0")
    with pytest.raises(hc.ClientConfigError, match="plaintext is allowed only on loopback"):
        hc.client_from_config(files.hubctl_config, hub="192.0.2.1:7100", env={})
    assert hc.client_from_config(files.hubctl_config, hub="localhost:7100", env={})


# -- keepalive --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keepalive_ms", "min_ping_ms"),
    [(30_000, 10_000), (5_000, 10_000), (10_000, 10_000), (1, 300_000)],
)
def test_client_keepalive_never_outpaces_the_server_ping_policy(
    keepalive_ms: int, min_ping_ms: int
) -> None:
    opts = sgrpc.ServerOptions(keepalive_time_ms=keepalive_ms, min_ping_interval_ms=min_ping_ms)
    args = dict(channel.channel_args(opts))
    assert args["grpc.keepalive_time_ms"] >= min_ping_ms
    assert args["grpc.keepalive_time_ms"] >= keepalive_ms
    # The defaults both sides use: the client pings well inside the server's tolerance.
    defaults = dict(channel.channel_args(sgrpc.ServerOptions()))
    assert defaults["grpc.keepalive_time_ms"] >= sgrpc.ServerOptions().min_ping_interval_ms


# -- config -----------------------------------------------------------------------------------

HUB_BASE = 'key_file = "k"\ntrust_file = "t"\n'


def test_hub_tls_table_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        HUB_BASE
        + '[[spokes]]\nname = "s1"\naddress = "10.0.0.1:1"\ntls_server_name = "s1.example"\n'
        + '[tls]\ncert_file = "tls/hub.crt"\nkey_file = "tls/hub.tls.key"\n'
        + 'ca_file = "tls/ca.crt"\n'
    )
    cfg = HubConfig.load(path, {})
    assert cfg.tls == tls.TlsConfig(
        tmp_path / "tls/hub.crt", tmp_path / "tls/hub.tls.key", tmp_path / "tls/ca.crt", True
    )
    assert cfg.spokes[0].tls_server_name == "s1.example"
    env = {"HUB_TLS_CA_FILE": "/etc/ca.crt", "HUB_TLS_REQUIRE_CLIENT_CERT": "false"}
    over = HubConfig.load(path, env)
    assert over.tls is not None
    assert (over.tls.ca_file, over.tls.require_client_cert) == (Path("/etc/ca.crt"), False)
    assert over.tls.cert_file == tmp_path / "tls/hub.crt"
    assert HubConfig.load(None, {"HUB_KEY_FILE": "k", "HUB_TRUST_FILE": "t"}).tls is None


@pytest.mark.parametrize(
    ("table", "env", "match"),
    [
        ('[tls]\ncert_file = "c"\n', {}, "needs cert_file, key_file and ca_file"),
        ('[tls]\ncert_file = "c"\ncolour = 1\n', {}, "unknown option 'colour'"),
        ("[tls]\ncert_file = 3\n", {}, "cert_file must be a non-empty path"),
        ("tls = 1\n", {}, "must be a table"),
        ("", {"HUB_TLS_REQUIRE_CLIENT_CERT": "maybe"}, "require_client_cert"),
        ("", {"HUB_TLS_CERT_FILE": "c"}, "needs cert_file, key_file and ca_file"),
    ],
)
def test_bad_hub_tls_is_one_line(
    tmp_path: Path, table: str, env: dict[str, str], match: str
) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(HUB_BASE + table)
    with pytest.raises(HubConfigError, match=match) as info:
        HubConfig.load(path, env)
    assert "\n" not in str(info.value)


def test_spoke_tls_table_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text('[tls]\ncert_file = "a.crt"\nkey_file = "a.key"\nca_file = "ca.crt"\n')
    cfg = SpokeConfig.load(path, {"SPOKE_TLS_REQUIRE_CLIENT_CERT": "0"})
    assert cfg.tls == tls.TlsConfig(
        tmp_path / "a.crt", tmp_path / "a.key", tmp_path / "ca.crt", False
    )
    assert SpokeConfig.load(None, {}).tls is None
    path.write_text('[tls]\nca_file = "ca.crt"\n')
    with pytest.raises(SpokeConfigError, match="needs cert_file"):
        SpokeConfig.load(path, {})


def test_client_tls_table(tmp_path: Path) -> None:
    path = tmp_path / "hubctl.toml"
    base = 'key_file = "k"\ntrust_file = "t"\n'
    path.write_text(
        base + '[tls]\nca_file = "ca.crt"\ncert_file = "me.crt"\nkey_file = "me.key"\n'
        'server_name = "hub.example"\n'
    )
    cfg = hc.load_client_config(path, {})
    assert cfg.tls == tls.TlsConfig(tmp_path / "me.crt", tmp_path / "me.key", tmp_path / "ca.crt")
    assert cfg.tls_server_name == "hub.example"
    over = hc.load_client_config(path, {"HUBCTL_TLS_CA_FILE": "/x/ca.crt"})
    assert over.tls is not None
    assert over.tls.ca_file == Path("/x/ca.crt")
    path.write_text(base + '[tls]\nca_file = "ca.crt"\nrequire_client_cert = true\n')
    with pytest.raises(hc.ClientConfigError, match="unknown option 'require_client_cert'"):
        hc.load_client_config(path, {})


# -- hubctl certs init ------------------------------------------------------------------------


def test_hubctl_certs_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tls"
    argv = ["certs", "init", "--out", str(out), "--name", "hub:localhost,127.0.0.1,::1"]
    assert cli.main([*argv, "--name", "spoke-1", "--name", "operator"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ca\t")
    assert lines[0].endswith("created")
    assert lines[1].split("\t")[-1] == "hub,localhost,127.0.0.1,::1"
    assert mode(out / "operator.tls.key") == 0o600

    assert cli.main(["--json", "certs", "init", "--out", str(out), "--name", "spoke-2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ca_created"] is False
    assert doc["certs"]["spoke-2"]["sans"] == ["spoke-2"]

    assert cli.main(["certs", "init", "--out", str(out), "--name", "spoke-2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["certs", "init", "--out", str(out), "--name", "x", "--days", "0"]) == 2
    assert cli.main(["certs", "init", "--out", str(out), "--name", "bad name"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith("Error: name 'bad name'")
