"""Every RPC the servers offer, read from the generated descriptors.

A method added to ``hub_service.proto`` or ``spoke_service.proto`` appears here without any
change to this package; its negative classes run at once. A method whose name matches no
``Command`` body case still gets every negative class (with the body of no verb) and is
listed under ``without_verb`` in the summary, so the gap is visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

from hubspoke.gen.federation.v1 import command_pb2, hub_service_pb2, spoke_service_pb2

SERVICES: Final[dict[str, descriptor.ServiceDescriptor]] = {
    "hub": hub_service_pb2.DESCRIPTOR.services_by_name["HubService"],
    "spoke": spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"],
}
BODY_CASES: Final = frozenset(
    f.name for f in command_pb2.Command.DESCRIPTOR.oneofs_by_name["body"].fields
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    server: str
    """``hub`` or ``spoke``: which server's port."""
    service: str
    method: str
    streaming: bool
    request: type[Message]
    response: type[Message]
    verb: str | None
    """The Command body case this RPC takes (``SpawnAgent`` → ``spawn_agent``), if any."""

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"

    @property
    def key(self) -> str:
        return f"{self.server}:{self.method}"


VERB_OF: Final[dict[str, str]] = {"CreateEnrolment": "enroll_spoke"}
"""RPCs whose body case is not their name in snake case."""


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def discover() -> list[Endpoint]:
    out: list[Endpoint] = []
    for server, svc in SERVICES.items():
        for m in svc.methods:
            if m.client_streaming:
                raise NotImplementedError(
                    f"{svc.full_name}/{m.name} is client-streaming: teach fuzzlib to send it"
                )
            verb = VERB_OF.get(m.name) or snake(m.name)
            out.append(
                Endpoint(
                    server=server,
                    service=svc.full_name,
                    method=m.name,
                    streaming=m.server_streaming,
                    request=message_factory.GetMessageClass(m.input_type),
                    response=message_factory.GetMessageClass(m.output_type),
                    verb=verb if verb in BODY_CASES else None,
                )
            )
    return out
