"""The caller's side: every unary call made through a channel is signed with a service credential."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from suara.runtime.auth.credential import ServiceCredential


class ServiceAuthClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Use as `grpc.aio.insecure_channel(addr, interceptors=[ServiceAuthClientInterceptor(credential)])`."""

    def __init__(self, credential: ServiceCredential) -> None:
        self.credential = credential

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        for key, value in self.credential.metadata(name):
            metadata.add(key, value)
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)
