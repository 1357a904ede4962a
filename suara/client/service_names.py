"""The suara.v1 services' full names and method paths, read from the generated descriptors.

Health checks, reflection, service-credential tokens (which sign the method path) and auth rules name
them; reading them here means a renamed service or RPC fails at import, not at the first call.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor import ServiceDescriptor

from suara.v1 import aggregate_pb2, publish_pb2, tally_pb2

TALLY: Final = tally_pb2.DESCRIPTOR.services_by_name["TallyService"]
AGGREGATE: Final = aggregate_pb2.DESCRIPTOR.services_by_name["AggregateService"]
PUBLISH: Final = publish_pb2.DESCRIPTOR.services_by_name["PublishService"]


def method_path(service: ServiceDescriptor, method: str) -> str:
    """The path a call carries, e.g. "/suara.v1.AggregateService/ApplyUpdates" (KeyError: no such RPC)."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"
