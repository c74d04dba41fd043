"""``hubctl init`` and ``hubctl completion``: the files for real hosts, and shell completion."""

from __future__ import annotations

import dataclasses
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from hubspoke import client, keys, policy, tls, trust
from hubspoke.hub import cli, cli_completion, cli_parser, init_join, init_templates
from hubspoke.hub.config import HubConfig
from hubspoke.spoke.config import SpokeConfig


def _hubctl(*argv: str) -> int:
    return cli.main(list(argv))


def _deploy(tmp_path: Path) -> tuple[Path, Path]:
    hub, spoke = tmp_path / "hub", tmp_path / "spoke"
    assert _hubctl("init", "hub", "--name", "hub", "--out", str(hub), "--operator", "alice") == 0
    assert (
        _hubctl(
            "init", "spoke", "--name", "build-2", "--out", str(spoke),
            "--address", "build-host", "--label", "pool=ci",
        )
        == 0
    )  # fmt: skip
    request = spoke / "build-2.request.toml"
    assert _hubctl("init", "add-spoke", "--hub-dir", str(hub), str(request)) == 0
    assert _hubctl("init", "accept", "--dir", str(spoke), str(spoke / "build-2.reply.toml")) == 0
    return hub, spoke


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_hub_and_a_spoke_that_load(tmp_path: Path) -> None:
    hub, spoke = _deploy(tmp_path)

    hub_cfg = HubConfig.load(hub / "hub.toml", {})
    assert hub_cfg.listen == "0.0.0.0:7100"
    assert [(s.name, s.address, dict(s.labels)) for s in hub_cfg.spokes] == [
        ("build-2", "build-host:7101", {"pool": "ci"})
    ]
    spoke_cfg = SpokeConfig.load(spoke / "spoke.toml", {})
    assert (spoke_cfg.name, dict(spoke_cfg.labels)) == ("build-2", {"pool": "ci"})
    assert set(spoke_cfg.profiles) == {"synthetic"}
    for cfg in (hub_cfg, spoke_cfg):
        assert cfg.tls is not None
        tls.server_credentials(cfg.tls)  # the certificate is the key's, every file readable
        tls.channel_credentials(cfg.tls)
        keys.load_private(cfg.key_file, cfg.name)
        assert cfg.policy_file is not None
        policy.Policy.from_file(cfg.policy_file)

    store = trust.TrustStore.from_file(hub / "trust.toml")
    assert store.peers() == ["alice", "build-2", "hub"]
    assert store.role_of("build-2") is trust.Role.SPOKE
    assert store.role_of("alice") is trust.Role.CLIENT
    assert (spoke / "trust.toml").read_text() == (hub / "trust.toml").read_text()
    assert client.load_client_config(hub / "hubctl.toml", {}).principal == "alice"

    spoke_key = keys.load_public_file(spoke / "keys" / "build-2.pub")
    assert {k.fingerprint for k in store.keys_of("build-2")} == {keys.fingerprint(spoke_key)}
    init_join.verify_leaf(
        (spoke / "tls" / "build-2.crt").read_text(),
        (hub / "tls" / "ca.crt").read_text(),
        spoke / "tls" / "build-2.tls.key",
        "build-2",
    )
    secrets = [*hub.rglob("*.key"), *spoke.rglob("*.key")]
    assert len(secrets) == 7  # signing and transport keys of hub, alice, build-2; the CA
    assert all(_mode(p) == 0o600 for p in secrets), {p: oct(_mode(p)) for p in secrets}
    # No private key of the spoke's ever went through the files exchanged.
    exchanged = (spoke / "build-2.request.toml").read_text() + (
        spoke / "build-2.reply.toml"
    ).read_text()
    assert "PRIVATE KEY" not in exchanged


def test_init_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hub"
    assert _hubctl("init", "hub", "--name", "hub", "--out", str(out)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _hubctl("init", "hub", "--name", "hub", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ")
    assert "already exists; refusing to overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    spoke = tmp_path / "spoke"
    (spoke / "keys").mkdir(parents=True)
    (spoke / "keys" / "s1.key").write_text("mine")
    assert _hubctl("init", "spoke", "--name", "s1", "--out", str(spoke)) == 2
    assert "refusing to overwrite a key" in capsys.readouterr().err
    assert (spoke / "keys" / "s1.key").read_text() == "mine"
    assert sorted(p.name for p in spoke.rglob("*")) == ["keys", "s1.key"]


def test_without_an_operator_the_policy_allows_nothing(tmp_path: Path) -> None:
    assert _hubctl("init", "hub", "--name", "hub", "--out", str(tmp_path)) == 0
    text = (tmp_path / "policy.toml").read_text()
    assert policy.Policy.from_file(tmp_path / "policy.toml").rules == ()
    assert '# principals = ["alice"]' in text  # the rule is there, commented out
    assert not (tmp_path / "hubctl.toml").exists()


def test_add_spoke_refuses_a_known_name_and_a_forged_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub, spoke = _deploy(tmp_path)
    request = spoke / "build-2.request.toml"
    trust_before = (hub / "trust.toml").read_text()
    capsys.readouterr()
    assert _hubctl("init", "add-spoke", "--hub-dir", str(hub), str(request)) == 2
    assert "'build-2' is already a peer" in capsys.readouterr().err

    # A request whose CSR is for another name than the one it asks for.
    other = tmp_path / "other"
    assert _hubctl("init", "spoke", "--name", "build-3", "--out", str(other)) == 0
    forged = tmp_path / "forged.request.toml"
    text = (other / "build-3.request.toml").read_text()
    forged.write_text(text.replace('name = "build-3"', 'name = "build-4"'))
    capsys.readouterr()
    assert _hubctl("init", "add-spoke", "--hub-dir", str(hub), str(forged)) == 2
    assert "is for another name" in capsys.readouterr().err
    assert (hub / "trust.toml").read_text() == trust_before


def test_accept_refuses_a_reply_for_another_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub, _spoke = _deploy(tmp_path)
    # Two hosts each made a build-5; the hub admits one (once). The other cannot use its reply.
    one, two = tmp_path / "one", tmp_path / "two"
    for host in (one, two):
        assert _hubctl("init", "spoke", "--name", "build-5", "--out", str(host)) == 0
    assert (
        _hubctl("init", "add-spoke", "--hub-dir", str(hub), str(one / "build-5.request.toml")) == 0
    )
    assert (
        _hubctl("init", "add-spoke", "--hub-dir", str(hub), str(one / "build-5.request.toml")) == 2
    )
    capsys.readouterr()
    assert _hubctl("init", "accept", "--dir", str(two), str(one / "build-5.reply.toml")) == 2
    assert "not for this host's key" in capsys.readouterr().err
    assert not (two / "tls" / "build-5.crt").exists()


def test_every_option_is_explained_in_the_generated_configs(tmp_path: Path) -> None:
    hub_fields = {f.name for f in dataclasses.fields(HubConfig)}
    spoke_fields = {f.name for f in dataclasses.fields(SpokeConfig)}
    assert set(init_templates.HUB_OPTIONS) == hub_fields
    assert set(init_templates.SPOKE_OPTIONS) == spoke_fields
    hub, spoke = _deploy(tmp_path)
    hub_text, spoke_text = (hub / "hub.toml").read_text(), (spoke / "spoke.toml").read_text()
    for name in hub_fields - {"spokes", "tls"}:
        assert f"{name} = " in hub_text, name
    for name in spoke_fields - {"profiles", "tls"}:
        assert f"{name} = " in spoke_text, name
    # The defaults shown are the code's: uncommenting every option changes nothing.
    for path, cls in ((hub / "hub.toml", HubConfig), (spoke / "spoke.toml", SpokeConfig)):
        text = path.read_text()
        head, table, tail = text.partition("\n[")
        uncommented = re.sub(r"^# ([a-z_]+ = )", r"\1", head, flags=re.M) + table + tail
        assert uncommented.count("\n") == text.count("\n")
        copy = path.with_name(f"uncommented-{path.name}")
        copy.write_text(uncommented)
        assert cls.load(copy, {}) == cls.load(path, {})


def test_systemd_units(tmp_path: Path) -> None:
    hub, spoke = _deploy(tmp_path)
    for unit, daemon, config in (
        (hub / "hubd.service", "hubd", hub / "hub.toml"),
        (spoke / "spoked.service", "spoked", spoke / "spoke.toml"),
    ):
        text = unit.read_text()
        lines = set(text.splitlines())
        exec_start = next(ln for ln in lines if ln.startswith("ExecStart="))
        binary, flag, path = exec_start.removeprefix("ExecStart=").split()
        assert Path(binary).is_absolute()
        assert Path(binary).name == daemon
        assert (flag, Path(path)) == ("--config", config)
        for expected in (
            "Type=simple",
            "Restart=on-failure",
            "User=hubspoke",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/hubspoke",
            "StateDirectory=hubspoke",
            "WantedBy=multi-user.target",
        ):
            assert expected in lines, (unit.name, expected)
        # spoked's agents outlive a stop or restart of the unit (their supervisors do).
        assert ("KillMode=process" in lines) == (daemon == "spoked"), unit.name
    assert "re-attaches" in (spoke / "spoked.service").read_text()
    if shutil.which("systemd-analyze") is not None:
        done = subprocess.run(
            ["systemd-analyze", "verify", str(hub / "hubd.service"), str(spoke / "spoked.service")],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr


# -- completion -------------------------------------------------------------------------------


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert _hubctl("completion", shell) == 0
    return capsys.readouterr().out


def _bash_complete(script: Path, *words: str) -> list[str]:
    """What the bash script offers after ``words`` (the last one being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    code = (
        f"source {script}\nCOMP_WORDS=({quoted})\nCOMP_CWORD={len(words) - 1}\n"
        '_hubctl\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completion_follows_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "hubctl.bash"
    script.write_text(_script("bash", capsys))
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    verbs = _bash_complete(script, "hubctl", "")
    assert {"spawn", "spokes", "init", "completion", "certs", "keys"} <= set(verbs)
    assert _bash_complete(script, "hubctl", "init", "") == ["hub", "spoke", "add-spoke", "accept"]
    assert _bash_complete(script, "hubctl", "--json", "init", "s") == ["spoke"]
    assert set(_bash_complete(script, "hubctl", "spawn", "--pr")) == {"--priority", "--profile"}
    assert _bash_complete(script, "hubctl", "queue", "") == ["stats", "pause", "resume", "drain"]
    assert _bash_complete(script, "hubctl", "completion", "") == ["bash", "zsh", "fish"]
    # An option's value is skipped when finding the verb path: "--hub spawn" is no verb.
    assert "--wait" in _bash_complete(script, "hubctl", "--hub", "h:1", "spawn", "--w")
    assert _bash_complete(script, "hubctl", "--hub", "spawn", "") == verbs  # spawn: the address
    (tmp_path / "request.toml").write_text("")
    offered = _bash_complete(script, "hubctl", "init", "add-spoke", "--hub-dir", f"{tmp_path}/re")
    assert offered == [f"{tmp_path}/request.toml"]
    assert set(_bash_complete(script, "hubctl", "keys", "rotate", "--role", "")) == {
        "client",
        "hub",
        "spoke",
    }


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion(
    shell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _script(shell, capsys)
    nodes = list(cli_completion.walk(cli_parser.build_parser()))
    paths = {" ".join(n.path) for n in nodes}
    assert {"", "init", "init hub", "init add-spoke", "keys rotate", "completion"} <= paths
    for sub in ("spawn", "init", "completion", "add-spoke", "accept"):
        assert sub in text
    if shell == "zsh":
        assert text.startswith("#compdef hubctl\n")
        assert "'init hub') reply=(" in text
        assert "'--operator:" in text
    else:
        assert "function __hubctl_path" in text
        assert "complete -c hubctl -n '__hubctl_at \\'init hub\\'' -l operator -x" in text
    binary = shutil.which(shell)
    if binary is None:
        return  # checked by content only: the shell is not installed here
    check = [binary, "-n"] if shell == "zsh" else [binary, "--no-execute"]
    done = subprocess.run([*check], input=text, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    if shell == "zsh":
        _zsh_exercise(binary, text, tmp_path)
    if shell == "fish":  # fish completes a command line without a terminal
        script = tmp_path / "hubctl.fish"
        script.write_text(text)
        asked = 'complete -C "hubctl --json init "; complete -C "hubctl queue "'
        done = subprocess.run(
            [binary, "--no-config", "-c", f"source {script}; {asked}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        offered = [line.split("\t")[0] for line in done.stdout.splitlines()]
        assert offered == [
            "accept",
            "add-spoke",
            "hub",
            "spoke",
            "drain",
            "pause",
            "resume",
            "stats",
        ]
        assert "on the spoke's host" in done.stdout


_ZSH_DRIVER = """
# zsh's completion builtins need a terminal; these print what the script would offer.
_describe() { local name=${@[-1]}; print -l -- ${(P)name%%:*}; }
compadd() { local name=${@[-1]}; print -l -- ${(P)name}; }
_files() { print FILES; }
words=(${=1})
[[ "$1" == *" " ]] && words+=("")
CURRENT=${#words}
source "$2"
"""


def _zsh_exercise(zsh: str, text: str, tmp_path: Path) -> None:
    """Run the zsh script's own logic for a few command lines."""
    script, driver = tmp_path / "_hubctl", tmp_path / "driver.zsh"
    script.write_text(text)
    driver.write_text(_ZSH_DRIVER)

    def offered(line: str) -> list[str]:
        done = subprocess.run(
            [zsh, "-f", str(driver), line, str(script)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,  # the status is the last test's in the script; the output is the answer
        )
        assert done.stderr == "", done.stderr
        return done.stdout.split()

    assert offered("hubctl init ") == ["hub", "spoke", "add-spoke", "accept"]
    assert offered("hubctl --json queue ") == ["stats", "pause", "resume", "drain"]
    assert "--operator" in offered("hubctl init hub --op")
    assert offered("hubctl init add-spoke --hub-dir ") == ["FILES"]
    assert offered("hubctl keys rotate --role ") == ["client", "hub", "spoke"]


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        'name = "x"\n# it\'s\n',
        "ends with a quote'",
        "has ''' inside",
        "tab\there, back\\slash, \x7f, \x00, é, \u2028",
        "",
    ],
)
def test_reply_strings_survive_toml(text: str) -> None:
    assert tomllib.loads(f"v = {init_join.toml_string(text)}\n") == {"v": text}
