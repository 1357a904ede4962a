"""The caller's side: a channel that proves a service credential, by certificate (TLS) or signed token (plaintext)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from suara.runtime.auth.certificate import CertCredential, credential_tls
from suara.runtime.auth.credential import ServiceCredential
from suara.runtime.settings import Settings
from suara.runtime.tls import open_channel


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


def caller_channel(
    address: str,
    settings: Settings,
    credential: CertCredential | ServiceCredential,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel whose every call proves `credential`: by its certificate over mutual TLS, or, in
    plaintext debugging mode, by a token signed into each call."""
    tls = credential_tls(settings, credential)
    if isinstance(credential, ServiceCredential):
        return open_channel(address, tls, options=options, interceptors=[ServiceAuthClientInterceptor(credential)])
    return open_channel(address, tls, options=options)
