"""Key files and the trust store file format."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hubspoke import keys
from hubspoke.trust import Role, TrustConfigError, TrustStore


def test_keypair_round_trip_with_private_mode_0600(tmp_path: Path) -> None:
    k = keys.generate("alice")
    priv, pub = keys.write_keypair(k, tmp_path)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    loaded = keys.load_private(priv, "alice")
    assert keys.fingerprint(loaded.public) == keys.fingerprint(k.public)
    assert keys.fingerprint(keys.load_public_file(pub)) == keys.fingerprint(k.public)
    assert "redacted" in repr(loaded)
    assert "PRIVATE" not in repr(loaded)


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    keys.write_keypair(keys.generate("bob"), tmp_path)
    with pytest.raises(FileExistsError):
        keys.write_keypair(keys.generate("bob"), tmp_path)


def test_loose_permissions_are_refused(tmp_path: Path) -> None:
    priv, _ = keys.write_keypair(keys.generate("carol"), tmp_path)
    os.chmod(priv, 0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load_private(priv, "carol")


def test_trust_store_from_toml(tmp_path: Path) -> None:
    a, b = keys.generate("a"), keys.generate("b")
    path = tmp_path / "trust.toml"
    path.write_text(
        f"""
[[peer]]
name = "a"
role = "client"
keys = [
  "{keys.encode_public(a.public)}",
  {{ key = "{keys.encode_public(b.public)}", not_after = 2020-01-01T00:00:00Z }},
]
"""
    )
    store = TrustStore.from_file(path)
    assert store.role_of("a") is Role.CLIENT
    assert len(store.keys_of("a")) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[peer]]\nname = "x"\nrole = "admin"\n', "role must be"),
        ('[[peer]]\nrole = "client"\n', "needs a name"),
        ('[[peer]]\nname = "x"\nrole = "client"\nkeys = ["rsa:abc"]\n', "ed25519:"),
        ('[[peer]]\nname = "x"\nrole = "client"\ncolour = "red"\n', "unknown keys"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_trust_store_fails_with_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "trust.toml"
    path.write_text(text)
    with pytest.raises(TrustConfigError, match=message):
        TrustStore.from_file(path)
