"""Enrolment (issue 10), on real hubd and spoked processes, real Redis and the real hubctl.

``hubctl spoke enroll`` prints a token; ``spoked --enroll TOKEN`` joins with it (new keys,
no file edited by hand); a spawn through hubctl then works although neither the hub's nor
the operator's trust file names the spoke. A second hubd on the same Redis sees it too.
``hubctl spoke remove`` revokes it: both hubds refuse its replies at once, and so does a
client holding one of its earlier replies. A used token, an expired token and a token
presented to another federation's hub are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from hubspoke import commands, envelope, errors, keys, testing
from hubspoke import enrol_token as tokens
from hubspoke.client import CallError, _enrol, _rpc
from hubspoke.gen.federation.v1 import (
    command_pb2,
    enrol_pb2,
    enrol_service_pb2,
    enrol_service_pb2_grpc,
)
from hubspoke.trust import Role

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

EDGE = "edge-1"
SPOKED = testing.server_argv("spoked", "hubspoke.spoke")


@dataclass
class Env:
    fed: testing.Federation
    root: Path
    edge_port: int
    hub_b: str
    """The address of a second hubd on the same Redis, which also dials edge-1 statically
    (its trust file has no key for it: only the membership vouches for edge-1)."""
    hub_c: str
    """A third hubd on the same Redis whose config names only spoke-1: it knows edge-1 from
    the membership alone."""
    agent: str = ""
    token: str = ""


def spoke_config(
    fed: testing.Federation, name: str, port: int, where: str, extra: str = ""
) -> Path:
    """A config for a new spoke beside the federation's files: its own keys, trust and
    policy under ``where`` (none of them exist yet), spoke-1's Redis, the test profiles."""
    base = fed.files.spoke_configs["spoke-1"].read_text()
    redis = "".join(line + "\n" for line in base.splitlines() if line.startswith("redis_"))
    path = fed.files.root / f"{where}.toml"
    path.write_text(
        f'name = "{name}"\nlisten = "127.0.0.1:{port}"\n'
        f'key_file = "{where}/keys/{name}.key"\ntrust_file = "{where}/trust.toml"\n'
        f'policy_file = "{where}/policy.toml"\n' + extra + redis + testing.DEFAULT_PROFILES
    )
    return path


async def enrol_run(token: str, config: Path) -> tuple[int, str]:
    """``spoked --enroll TOKEN`` that is expected to refuse: its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *SPOKED,
        "--enroll",
        token,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=testing.server_env(),
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return await proc.wait(), err.decode()


async def enrol_direct(address: str, token: str, name: str) -> grpc.StatusCode:
    """EnrollSpoke as a plaintext spoke would send it (a new key, no CSR): the status."""
    key = keys.generate(name)
    request = enrol_pb2.EnrolmentRequest(
        token=token,
        name=name,
        address="127.0.0.1:9",
        issue_time=commands.to_timestamp(commands.now()),
    )
    signed = envelope.sign(request.SerializeToString(), tokens.PAYLOAD_TYPE_REQUEST, key)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = enrol_service_pb2_grpc.EnrolServiceStub(channel)
        try:
            await stub.EnrollSpoke(
                enrol_service_pb2.EnrolServiceEnrollSpokeRequest(
                    request=signed, public_key=key.public.public_bytes_raw()
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("enrol")
    fed = testing.Federation(root / "fed", ["spoke-1"], hub_env={"HUB_PROBE_INTERVAL_S": "0.5"})
    try:
        await fed.start()
        edge_port = testing.pick_free_port()
        hub_b = await fed.start_hub(
            "hub-b",
            # edge-1 does not exist until a test enrols it: its breaker must not open first.
            env={"HUB_CIRCUIT_FAILURES": "100000"},
            spokes={
                "spoke-1": fed.address("spoke-1"),
                EDGE: f"127.0.0.1:{edge_port}",
            },
        )
        hub_c = await fed.start_hub("hub-c", spokes={"spoke-1": fed.address("spoke-1")})
        yield Env(fed, root, edge_port, f"127.0.0.1:{hub_b.port}", f"127.0.0.1:{hub_c.port}")
    finally:
        await fed.stop()


async def test_enrol_spawn_with_untouched_trust_files(env: Env) -> None:
    fed = env.fed
    trust_before = digest(fed.files.trust_file)
    run = await fed.hubctl(
        "--json", "spoke", "enroll", EDGE, "--label", "zone=edge", "--label", "gpu=no",
        "--address", f"127.0.0.1:{env.edge_port}",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    env.token = token = run.doc()["token"]
    assert token.startswith(tokens.PREFIX)
    pins = tokens.decode(token)
    assert (pins.name, pins.hub, pins.ca_fingerprint) == (EDGE, fed.hub_name, b"")

    config = spoke_config(fed, EDGE, env.edge_port, "edge")
    edge = testing.Daemon(
        EDGE,
        [
            *SPOKED,
            "--enroll",
            token,
            "--config",
            str(config),
        ],
        fed.logs / f"{EDGE}.log",
    )
    fed.spokeds[EDGE] = [edge]  # stopped with the federation
    await edge.start()
    assert (fed.files.root / "edge" / "keys" / f"{EDGE}.key").stat().st_mode & 0o077 == 0

    # The operator's (and the hub's) trust file does not name edge-1, and was not edited.
    assert EDGE not in fed.files.trust_file.read_text()
    run = await fed.hubctl("--json", "spawn", "--spoke", EDGE, "--wait", "--", "duration=0.1")
    assert run.code == 0, run.stderr
    env.agent = run.doc()["agent_id"]
    assert digest(fed.files.trust_file) == trust_before
    await fed.hub.restart()  # the membership lives in the hub's Redis: it survives a restart
    run = await fed.hubctl("--json", "status", env.agent, "--spoke", EDGE)
    assert run.code == 0, run.stderr
    async with fed.client(hub=env.hub_c) as via_c:  # another hubd: from the membership alone
        assert (await via_c.get(env.agent, EDGE)).agent_id == env.agent
    async with fed.client() as client:  # the audit log keeps no token, only its digest
        page = await client.audit_log(page_size=500)
        [entry] = [r for r in page.records if r.action == "CreateEnrolment"]
        assert entry.replies == ()
        assert "sha256" in entry.detail
        assert all(token.encode() not in r.request + b"".join(r.replies) for r in page.records)

    run = await fed.hubctl("--json", "spoke", "members")
    assert run.code == 0, run.stderr
    [member] = run.doc()["members"]
    assert (member["name"], member["mode"]) == (EDGE, "dial")
    assert member["labels"] == {"zone": "edge", "gpu": "no"}
    assert member["address"] == f"127.0.0.1:{env.edge_port}"
    assert "synthetic" in member["profiles"]

    run = await fed.hubctl("--json", "spokes")
    assert run.code == 0, run.stderr
    listed = {s["name"]: s for s in run.doc()["spokes"]}
    assert listed[EDGE]["labels"] == {"zone": "edge", "gpu": "no"}
    assert (listed[EDGE]["enrolled"], listed[EDGE]["link_mode"]) == (True, "dial")
    run = await fed.hubctl("spokes")
    assert run.code == 0, run.stderr
    [row] = [line for line in run.stdout.splitlines() if line.startswith(EDGE)]
    assert "dial (enrolled)" in row, row
    assert "gpu=no,zone=edge" in row, row
    assert (listed["spoke-1"].get("enrolled", False), listed["spoke-1"]["link_mode"]) == (
        False,
        "dial",
    )


async def test_used_expired_and_foreign_tokens_are_refused(env: Env) -> None:
    fed = env.fed
    assert env.agent, "runs after the enrolment test"
    # Bad input: one readable line, the documented exit code.
    run = await fed.hubctl("spoke", "enroll", "spoke-1")
    assert run.code == 1, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert "SPOKE_NAME_TAKEN" in run.stderr, run.stderr
    run = await fed.hubctl("spoke", "enroll")
    assert run.code == 2, run.stderr
    assert "needs NAME" in run.stderr, run.stderr

    run = await fed.hubctl("--json", "spoke", "enroll", "edge-2", "--ttl", "0.3")
    assert run.code == 0, run.stderr
    expired = run.doc()["token"]
    run = await fed.hubctl("--json", "spoke", "enroll", "edge-3")
    assert run.code == 0, run.stderr
    fresh = run.doc()["token"]

    # A used token: edge-1's own, presented again with new keys.
    again = spoke_config(fed, EDGE, testing.pick_free_port(), "edge-again")
    code, err = await enrol_run(env.token, again)
    assert code == 2, err
    assert "ENROL_TOKEN_USED" in err, err

    # Two tokens for one name: the second is refused once the first enrolled, and not used up.
    twice = []
    for _ in range(2):
        run = await fed.hubctl("--json", "spoke", "enroll", "edge-4", "--address", "127.0.0.1:9")
        assert run.code == 0, run.stderr
        twice.append(run.doc()["token"])
    assert (await enrol_direct(fed.hub_address, twice[0], "edge-4")) == grpc.StatusCode.OK
    assert (await enrol_direct(fed.hub_address, twice[1], "edge-4")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    run = await fed.hubctl("spoke", "remove", "edge-4")
    assert run.code == 0, run.stderr
    assert (await enrol_direct(fed.hub_address, twice[1], "edge-4")) == grpc.StatusCode.OK
    assert (await fed.hubctl("spoke", "remove", "edge-4")).code == 0

    # Expired.
    await asyncio.sleep(0.5)
    code, err = await enrol_run(expired, spoke_config(fed, "edge-2", 1, "edge-2"))
    assert code == 2, err
    assert "ENROL_TOKEN_EXPIRED" in err, err

    # A token presented to another, independent federation's hub: the spoke refuses before
    # it sends the token (the other hub cannot prove the pinned key), and writes nothing.
    other = testing.Federation(env.root / "other", ["x-1"])
    try:
        await other.start(spokeds=False)
        pins = tokens.decode(fresh)
        pins.address = other.hub_address
        redirected = tokens.encode(pins)
        config = spoke_config(fed, "edge-3", 1, "edge-3")
        code, err = await enrol_run(redirected, config)
        assert code == 2, err
        assert "token presented to another hub" in err, err
        assert not (fed.files.root / "edge-3" / "keys" / "edge-3.key").exists()
    finally:
        await other.stop()
    # The token itself is still good at its own hub (it was never sent anywhere).
    members = await _members(fed)
    assert "edge-3" not in members


async def _members(fed: testing.Federation) -> list[str]:
    run = await fed.hubctl("--json", "spoke", "members")
    assert run.code == 0, run.stderr
    return [m["name"] for m in run.doc()["members"]]


async def test_remove_is_refused_at_once_by_every_hub_and_by_the_client(env: Env) -> None:
    fed = env.fed
    assert env.agent, "runs after the enrolment test"
    async with (
        fed.client() as client,
        fed.client(hub=env.hub_b) as via_b,
        fed.client(hub=env.hub_c) as via_c,
    ):
        # Before: both hubds relay to edge-1 and verify its replies (hub-b only through the
        # membership: its trust file has no key for edge-1).
        _, resp = await client._call(_rpc.GET, EDGE, command_pb2.GetAgentBody(agent=env.agent))
        old_reply = resp.reply
        assert (await via_b.get(env.agent, EDGE)).agent_id == env.agent

        run = await fed.hubctl("--json", "spoke", "remove", EDGE)
        assert run.code == 0, run.stderr
        assert EDGE not in [m["name"] for m in run.doc()["members"]]

        # At once, through the other hubd: the reply is refused (its key is not trusted any
        # more), not relayed.
        started = time.monotonic()
        with pytest.raises(CallError) as refused:
            await via_b.get(env.agent, EDGE)
        assert refused.value.reason == "SPOKE_REPLY_INVALID", refused.value
        assert time.monotonic() - started < 5
        # Neither does the hub that removed it, nor the one that knew it from the membership.
        for hub in (client, via_c):
            with pytest.raises(CallError) as gone:
                await hub.get(env.agent, EDGE)
            assert gone.value.reason == "SPOKE_NOT_FOUND", gone.value

    # hubctl: the spoke is gone from the list, and a client refuses an earlier reply of it.
    run = await fed.hubctl("status", env.agent, "--spoke", EDGE)
    assert run.code == 3, run.stderr
    assert "SPOKE_NOT_FOUND" in run.stderr, run.stderr
    async with fed.client() as fresh:
        await _enrol.know_signers(fresh, [old_reply])
        with pytest.raises(errors.SignatureInvalidError):
            envelope.verify(
                old_reply,
                payload_type=envelope.PAYLOAD_TYPE_REPLY,
                trust=fresh._trust,
                roles={Role.SPOKE},
            )


async def test_enrolment_over_tls_pins_the_ca(tmp_path: Path) -> None:
    """With [tls], the spoke reads the hub's chain on enrol_listen, keeps only the CA its
    token pins, and gets its certificate from the hub's CA; another CA is refused."""
    fed = testing.Federation(tmp_path / "tls", ["spoke-1"], tls=True)
    try:
        await fed.start()
        tls_dir = fed.files.tls_dir
        assert tls_dir is not None
        hub = await fed.start_hub(
            "hub-tls",
            env={
                "HUB_ENROL_LISTEN": "127.0.0.1:0",
                "HUB_ENROL_CA_KEY_FILE": str(tls_dir / "ca.key"),
            },
        )
        edge_port = testing.pick_free_port()
        run = await testing.run_hubctl(
            fed.files.hubctl_config,
            f"127.0.0.1:{hub.port}",
            "--json", "spoke", "enroll", EDGE, "--address", f"127.0.0.1:{edge_port}",
        )  # fmt: skip
        assert run.code == 0, run.stderr
        token = run.doc()["token"]
        assert len(tokens.decode(token).ca_fingerprint) == 32

        # The same token with another CA pinned: refused before the token leaves the spoke.
        pins = tokens.decode(token)
        pins.ca_fingerprint = bytes(32)
        config = spoke_config(fed, EDGE, edge_port, "edge")
        with config.open("a") as fh:
            fh.write(
                '\n[tls]\ncert_file = "edge/edge-1.crt"\nkey_file = "edge/edge-1.tls.key"\n'
                'ca_file = "edge/ca.crt"\n'
            )
        code, err = await enrol_run(tokens.encode(pins), config)
        assert code == 2, err
        assert "token presented to another hub" in err, err

        edge = testing.Daemon(
            EDGE, [*SPOKED, "--enroll", token, "--config", str(config)], fed.logs / "edge.log"
        )
        fed.spokeds[EDGE] = [edge]
        await edge.start()
        assert (fed.files.root / "edge" / "edge-1.crt").exists()
        run = await testing.run_hubctl(
            fed.files.hubctl_config,
            f"127.0.0.1:{hub.port}",
            "--json", "spawn", "--spoke", EDGE, "--wait", "--", "duration=0.1",
        )  # fmt: skip
        assert run.code == 0, run.stderr
    finally:
        await fed.stop()


async def test_enrol_service_refuses_bad_input(env: Env) -> None:
    """EnrolService takes no client signature: its own checks answer bad input clearly."""
    fed = env.fed
    channel = grpc.aio.insecure_channel(fed.hub_address)
    stub = enrol_service_pb2_grpc.EnrolServiceStub(channel)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as short:
            await stub.ProveHub(
                enrol_service_pb2.EnrolServiceProveHubRequest(challenge=b"x"), timeout=5
            )
        assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        spoke_key = keys.generate("edge-9")
        request = enrol_pb2.EnrolmentRequest(
            token=tokens.PREFIX + "garbage",
            name="edge-9",
            issue_time=commands.to_timestamp(commands.now()),
        )
        signed = envelope.sign(request.SerializeToString(), tokens.PAYLOAD_TYPE_REQUEST, spoke_key)
        cases = {
            "unsigned": (
                command_pb2.SignedEnvelope(
                    payload=signed.payload, payload_type=signed.payload_type
                ),
                spoke_key,
            ),
            "forged": (signed, keys.generate("other")),
            "bad token": (signed, spoke_key),
        }
        want = {
            "unsigned": grpc.StatusCode.UNAUTHENTICATED,
            "forged": grpc.StatusCode.UNAUTHENTICATED,
            "bad token": grpc.StatusCode.INVALID_ARGUMENT,
        }
        for what, (env_, key) in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.EnrollSpoke(
                    enrol_service_pb2.EnrolServiceEnrollSpokeRequest(
                        request=env_, public_key=key.public.public_bytes_raw()
                    ),
                    timeout=5,
                )
            assert refused.value.code() == want[what], (what, refused.value.details())
    finally:
        await channel.close(None)


async def test_a_connect_mode_spoke_enrols_and_serves(env: Env) -> None:
    """--connect: the member has no address; the spoke dials the hub after enrolling."""
    fed = env.fed
    run = await fed.hubctl("--json", "spoke", "enroll", "edge-c", "--connect")
    assert run.code == 0, run.stderr
    token = run.doc()["token"]
    extra = f'link = "connect"\nhub_address = "{fed.hub_address}"\n'
    config = spoke_config(fed, "edge-c", testing.pick_free_port(), "edge-c", extra)
    spoke = testing.Daemon(
        "edge-c", [*SPOKED, "--enroll", token, "--config", str(config)], fed.logs / "edge-c.log"
    )
    fed.spokeds["edge-c"] = [spoke]
    await spoke.start()
    run = await fed.hubctl("--json", "spoke", "members")
    member = {m["name"]: m for m in run.doc()["members"]}["edge-c"]
    assert (member["mode"], member["address"]) == ("connect", "")
    async with fed.client() as client:
        deadline = time.monotonic() + 20
        while True:
            try:
                agent = await client.spawn("edge-c", "synthetic", "duration=0.1")
                break
            except CallError as exc:  # UNAVAILABLE until its control stream is up
                if exc.code.name != "UNAVAILABLE" or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert agent.spoke == "edge-c"


async def test_enrol_service_is_rate_limited_per_caller(env: Env) -> None:
    """EnrolService takes no signature: one address may call it enrol_burst times at once
    (10), then enrol_rate a second (2); over that, RESOURCE_EXHAUSTED RATE_LIMITED."""
    channel = grpc.aio.insecure_channel(env.hub_b)  # its own buckets: hub-b's memory
    stub = enrol_service_pb2_grpc.EnrolServiceStub(channel)
    codes: list[grpc.StatusCode] = []
    try:
        for _ in range(14):
            try:
                await stub.ProveHub(
                    enrol_service_pb2.EnrolServiceProveHubRequest(challenge=bytes(16)), timeout=5
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
    finally:
        await channel.close(None)
    assert codes[:10] == [grpc.StatusCode.OK] * 10
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[10:]
