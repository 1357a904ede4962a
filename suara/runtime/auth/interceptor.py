"""The server side: every call is authenticated, then its method authorized against the service's rules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import grpc

from suara.runtime.auth.principal import CALLER, Authenticator, Call, Principal
from suara.runtime.errors import PermissionDenied

# Always reachable: load balancers probe health without credentials, and reflection only describes the API.
OPEN_PREFIXES: Final = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call with `authenticator`, then checks its role against `rules`.

    `rules` maps a full method name to the role it needs; a method in neither `rules` nor
    `open_methods` is denied to everyone (a new RPC is closed until someone decides who may call
    it). `open_methods` need no credential: their request proves itself (a signed form, an
    official's signed recap) or is public. Health and reflection are always open. A refusal is
    raised inside the call, so the server kit maps it to a status like any other ServiceError.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        rules: Mapping[str, str],
        *,
        open_methods: frozenset[str] = frozenset(),
    ) -> None:
        self.authenticator = authenticator
        self._rules = dict(rules)
        self._open = open_methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method in self._open or method.startswith(OPEN_PREFIXES):
            return handler  # None: no such method, and gRPC answers UNIMPLEMENTED
        inner = handler.unary_unary
        if inner is None:  # every suara RPC is unary: anything else stays closed rather than unchecked
            return _closed(handler)
        metadata = dict(handler_call_details.invocation_metadata or ())

        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = await self.authenticator.authenticate(Call(method, request, metadata, context))
            self.authorize(method, principal)
            CALLER.set(principal)  # this call's own context: the handler may name who called
            return await inner(request, context)  # type: ignore[arg-type]  # aio handlers take aio contexts

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def authorize(self, method: str, principal: Principal) -> None:
        needed = self._rules.get(method)
        if needed is None:
            raise PermissionDenied(f"{method} is not open to any {self.authenticator.name}")
        if principal.role != needed:
            raise PermissionDenied(
                f"credential {principal.id} is a {principal.role}; {method} needs a {needed} credential"
            )


def _closed(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that only refuses."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only unary methods are checked; this one is closed")

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
