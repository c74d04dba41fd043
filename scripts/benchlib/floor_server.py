"""The federation bench's floor: bare grpc.aio streams over TLS, one signature check per
heartbeat, and nothing else (no sessions, health, metrics or relay).

Run as ``python scripts/benchlib/floor_server.py SPEC.json`` with the spec::

    {"trust_file": ".../trust.toml", "cert_file": ".../tls/hub.crt",
     "key_file": ".../tls/hub.tls.key", "ca_file": ".../tls/ca.crt"}

It serves ``/floor.Floor/Stream`` (bidirectional, raw bytes) on a free loopback port with
mutual TLS and prints ``serving PORT``. A stream's first message is the spoke's name, each
later one a heartbeat: a serialized SignedEnvelope (the spoke's signed status), verified
against the trust store. It answers nothing; exits on SIGTERM. The simulators' ``floor``
mode (:mod:`benchlib.sim_spokes`) dials it, with the hub's certificate name.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from hubspoke import envelope
from hubspoke import tls as stls
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role, TrustStore

SERVICE = "floor.Floor"
METHOD = f"/{SERVICE}/Stream"


async def main(spec: dict[str, str]) -> None:
    trust = TrustStore.from_file(Path(spec["trust_file"]))
    creds = stls.server_credentials(
        stls.TlsConfig(Path(spec["cert_file"]), Path(spec["key_file"]), Path(spec["ca_file"]))
    )

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        first = True
        async for msg in requests:
            if first:
                first = False
                continue
            env = command_pb2.SignedEnvelope.FromString(msg)
            envelope.verify(
                env, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=trust, roles={Role.SPOKE}
            )
        if False:  # an async generator that answers nothing
            yield b""

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    print(f"serving {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
