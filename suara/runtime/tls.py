"""TLS on every gRPC listener and channel, configured from files.

Servers. `server_tls(settings, section)` reads a service's certificate and key and the deployment's CA
and CRL (see Settings.tls and each service's section). Its `credentials()` are gRPC's dynamic
credentials: before every new handshake a fetcher compares the files' stat with what it loaded, and
reloads them when they changed, so a renewed certificate (or CA bundle) is used without a restart.
A public listener asks for no client certificate (a device proves itself by its signed form); an
internal listener requires one signed by the CA. gRPC Python cannot set a minimum TLS version
(grpc/grpc#37305), so `RequireTls13` refuses every call on a connection that negotiated anything else.

Revocation. `Revocations` holds the CRL's revoked serials and re-reads the file when it changes,
checking at most every RECHECK_S, so a running process refuses a revoked certificate within a second.

Clients. `client_tls(settings, identity)` gives what a channel needs (the CA, and a client
certificate for service calls); `open_channel()` is the one way a suara process opens a channel. A
service's client certificate read from its file is followed like a server's: the channel reopens
with the renewed one (`FollowingChannel`), so a relay or publish needs no restart either.

Plain text only when asked for explicitly (SUARA_INSECURE=1, `--insecure`), logged loudly: for
debugging, never by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from suara.runtime import pki
from suara.runtime.settings import SettingError, Settings
from suara.runtime.targets import channel_target

log = structlog.stdlib.get_logger("suara.tls")

TLS13: Final = b"TLSv1.3"  # the auth context's `ssl_tls_version` of a TLS 1.3 connection
CLIENT_RECHECK_S: Final = 1.0  # how often a running client looks at its certificate files (a stat each)
OLD_CHANNEL_GRACE_S: Final = 60.0  # calls in flight on a channel replaced by a renewed certificate finish
RECHECK_S: Final = 0.25  # how stale the CRL may be: a revoked certificate is refused within about this
SECTIONS: Final = ("tally", "aggregate", "publish")
INSECURE_WARNING: Final = (
    "PLAINTEXT gRPC (SUARA_INSECURE): no TLS, credentials travel in clear and can be replayed; debugging only"
)


def _stat(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def _key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the key is the certificate's: a certificate replaced before its key is not loaded half-done."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        cert.public_key().public_bytes(serialization.Encoding.DER, spki)
        == key.public_key().public_bytes(serialization.Encoding.DER, spki)
    )


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate, key, the CA its clients' certificates must chain to, and the CA's CRL."""

    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None
    revocations: Revocations = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "revocations", Revocations(self.crl, self.ca))

    def _configuration(self) -> Any:
        cert, key = self.cert.read_bytes(), self.key.read_bytes()
        if not _key_matches(cert, key):
            raise ValueError(f"{self.key} is not the private key of {self.cert}")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=self.ca.read_bytes())

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials for one listener, reloading the files when they change (checked at each new handshake)."""
        paths = (self.cert, self.key, self.ca)
        loaded = [_stat(paths)]
        lock = threading.Lock()  # the fetcher runs on gRPC's threads

        def fetch() -> Any:
            seen = _stat(paths)
            with lock:
                if seen == loaded[0]:
                    return None
                try:
                    config = self._configuration()
                except (OSError, ValueError) as exc:  # mid-replacement: keep serving the old ones, retry next time
                    log.warning("tls_reload_failed", cert=str(self.cert), error=str(exc))
                    return None
                loaded[0] = seen
            log.info("tls_reloaded", cert=str(self.cert))
            return config

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(), fetch, require_client_authentication=require_client_auth
        )


class Revocations:
    """The serials a CRL revokes, re-read when its file changes (looked at no more than every RECHECK_S).

    A CRL that cannot be read or is not signed by the CA is logged and the last good one kept: a
    truncated file mid-write must not un-revoke anything."""

    def __init__(self, crl: Path | None, ca: Path) -> None:
        self.crl = crl
        self.ca = ca
        self._serials: frozenset[int] = frozenset()
        self._seen: tuple[tuple[int, int, int], ...] = ()
        self._checked = float("-inf")
        if crl is not None:
            self._refresh(force=True)

    def _refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.crl is None or (not force and now - self._checked < RECHECK_S):
            return
        self._checked = now
        seen = _stat((self.crl, self.ca))
        if seen == self._seen:
            return
        try:
            ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
            serials = pki.Crl.revoked_serials(self.crl.read_bytes(), ca)
        except (OSError, ValueError) as exc:
            log.error("crl_unreadable", crl=str(self.crl), error=str(exc))
            if force and not self._seen:
                raise SettingError("SUARA_CRL_FILE", str(self.crl), f"a CRL signed by {self.ca} ({exc})") from None
            return
        if serials != self._serials:
            log.info("crl_loaded", crl=str(self.crl), revoked=len(serials))
        self._serials, self._seen = serials, seen

    def is_revoked(self, serial: int) -> bool:
        self._refresh()
        return serial in self._serials


class RequireTls13(grpc.aio.ServerInterceptor):
    """Refuses every call on a connection that did not negotiate TLS 1.3 (gRPC accepts 1.2, unasked)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _checked(handler)


def _refusal(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    versions = list(context.auth_context().get("ssl_tls_version") or [b"none"])
    if versions[0] == TLS13:
        return None
    return f"this server takes TLS 1.3 only; the connection negotiated {versions[0].decode(errors='replace')}"


def _checked(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if (why := _refusal(context)) is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
            return await unary(request, context)  # type: ignore[arg-type]  # aio handlers take aio contexts

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_checked_stream(handler.unary_stream), **kwargs)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(_checked_stream(handler.stream_stream), **kwargs)
    return handler  # stream-unary: suara has none


def _checked_stream(inner: Any) -> Any:
    """A streaming handler (health's Watch, reflection) behind the TLS 1.3 check; one shape for both kinds."""

    async def streaming(request_or_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if (why := _refusal(context)) is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        result: Any = inner(request_or_requests, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:
            await result

    return streaming


def _existing(env: str, value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise SettingError(env, value, "an existing PEM file")
    return path


def server_tls(settings: Settings, section: str) -> ServerTls | None:
    """The TLS of `section`'s listeners (tally, aggregate, publish); None, logged loudly, with SUARA_INSECURE.

    Missing certificate settings are a SettingError naming each (the CLI exits 2): TLS is the default."""
    if settings.tls.insecure:
        log.warning("insecure", detail=INSECURE_WARNING, service=section)
        return None
    part = getattr(settings, section)
    prefix = f"SUARA_{section.upper()}_TLS"
    wanted = {f"{prefix}_CERT": part.tls_cert, f"{prefix}_KEY": part.tls_key, "SUARA_CA_FILE": settings.tls.ca_file}
    missing = [env for env, value in wanted.items() if not value]
    if missing:
        raise SettingError(
            missing[0],
            "",
            f"{section} serves TLS by default and needs {', '.join(missing)} (PEM files, see `suara pki`); "
            "or SUARA_INSECURE=1 for plaintext, for debugging only",
        )
    cert, key, ca = (_existing(env, value) for env, value in wanted.items())
    crl = _existing("SUARA_CRL_FILE", settings.tls.crl_file) if settings.tls.crl_file else None
    return ServerTls(cert, key, ca, crl)


@dataclass(frozen=True)
class ClientTls:
    """What a client channel needs: the CA that signed the server's certificate, and this client's own
    certificate and key for a service call (None for a device, which is not known by a certificate).

    Read by `from_files`, it knows its files (`sources`) and their stat when read (`loaded`): a channel
    opened with it follows them (`FollowingChannel`), so a renewed client certificate is used without
    a restart."""

    ca_pem: bytes
    identity: pki.KeyPair | None = None
    sources: tuple[Path, ...] = ()  # (CA, certificate-and-key bundle) when read from files
    loaded: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_files(cls, ca: Path, bundle: Path) -> ClientTls:
        """The CA and a client certificate with its key in one PEM file (a service's credential file).
        ValueError if the key is not the certificate's (a bundle being replaced)."""
        paths = (ca, bundle)
        seen = _stat(paths)  # before reading: a change during the read is seen at the next look
        pair = pki.split_bundle(bundle.read_bytes())
        if not _key_matches(pair.cert_pem, pair.key_pem):
            raise ValueError(f"{bundle}: the key is not the certificate's")
        return cls(ca.read_bytes(), pair, paths, seen)

    def changed(self) -> bool:
        """Whether its files differ (stat: mtime, size, inode) from when it was read."""
        return bool(self.sources) and _stat(self.sources) != self.loaded

    def renewed(self) -> ClientTls | None:
        """A fresh read of its files if they changed; None if not, or if they cannot be read yet
        (logged; the caller keeps the one it has and looks again later)."""
        if not self.changed():
            return None
        try:
            fresh = ClientTls.from_files(*self.sources)
        except (OSError, ValueError) as exc:
            log.warning("tls_client_reload_failed", files=[str(p) for p in self.sources], error=str(exc))
            return None
        if fresh == self:  # touched, not changed: remember the new stat, keep the channel
            object.__setattr__(self, "loaded", fresh.loaded)
            return None
        return fresh

    def credentials(self) -> grpc.ChannelCredentials:
        if self.identity is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.identity.key_pem,
            certificate_chain=self.identity.cert_pem,
        )


def client_tls(settings: Settings, identity: pki.KeyPair | None = None, bundle: Path | None = None) -> ClientTls | None:
    """TLS for a channel from the settings (SUARA_CA_FILE); None, logged loudly, with SUARA_INSECURE.
    With `bundle` (the file `identity` was read from), the identity is read from it and followed."""
    if settings.tls.insecure:
        log.warning("insecure", detail=INSECURE_WARNING)
        return None
    if not settings.tls.ca_file:
        raise SettingError(
            "SUARA_CA_FILE", "", "the CA that signed the server's certificate (PEM; `--ca`), or SUARA_INSECURE=1"
        )
    ca = _existing("SUARA_CA_FILE", settings.tls.ca_file)
    if bundle is not None:
        return ClientTls.from_files(ca, bundle)
    return ClientTls(ca.read_bytes(), identity)


def ca_client_tls(ca: Path | None, identity: pki.KeyPair | None = None) -> ClientTls | None:
    """TLS from a CA file given directly (a `--ca` flag); None means plaintext."""
    return None if ca is None else ClientTls(ca.read_bytes(), identity)


def open_channel(
    address: str,
    tls: ClientTls | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to `address`: TLS verified against the CA (with the client certificate, when there is
    one), or plaintext when `tls` is None (explicitly insecure). `address` may name several instances
    (`h1:p1,h2:p2`): calls then go to those reporting SERVING (suara.runtime.targets). A client
    certificate read from files (`ClientTls.from_files`) gives a `FollowingChannel`, which picks up a
    renewed certificate."""
    spread = channel_target(address)
    target, options = spread.target, [*options, *spread.options]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=list(interceptors) or None)
    if tls.sources and tls.identity is not None:
        return FollowingChannel(target, tls, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options, interceptors=list(interceptors) or None)


class FollowingChannel(grpc.aio.Channel):
    """A TLS channel that follows its certificate files: before a call, at most every CLIENT_RECHECK_S,
    it compares their stat with what it read; when they changed it opens a new channel with the new
    certificate for the calls that follow, and closes the old one once the calls in flight on it are
    done (within OLD_CHANNEL_GRACE_S). Stubs made on it keep working: each call goes to the current one."""

    def __init__(
        self,
        address: str,
        tls: ClientTls,
        *,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.address = address
        self.tls = tls
        self.reopened = 0  # times a renewed certificate replaced the channel
        self._options = list(options)
        self._interceptors = list(interceptors) or None
        self._channel = self._open(tls)
        self._checked = time.monotonic()
        self._retiring: set[asyncio.Task[None]] = set()

    def _open(self, tls: ClientTls) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            self.address, tls.credentials(), options=self._options, interceptors=self._interceptors
        )

    def current(self) -> grpc.aio.Channel:
        """The channel to call on: reopened first if the certificate files changed (looked at now and then)."""
        now = time.monotonic()
        if now - self._checked < CLIENT_RECHECK_S:
            return self._channel
        self._checked = now
        renewed = self.tls.renewed()
        if renewed is None:
            return self._channel
        old, self._channel, self.tls = self._channel, self._open(renewed), renewed
        self.reopened += 1
        retiring = asyncio.get_running_loop().create_task(old.close(OLD_CHANNEL_GRACE_S))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        serial = renewed.identity.certificate.serial_number if renewed.identity else 0
        log.info("tls_client_reloaded", address=self.address, serial=f"{serial:x}")
        return self._channel

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)
        for retiring in list(self._retiring):
            retiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retiring

    async def __aenter__(self) -> FollowingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Following(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Following(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Following(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Following(self, "stream_stream", method, args, kwargs)


class _Following:
    """A stub's method on a FollowingChannel: each call is made on the channel current at the time."""

    def __init__(
        self, owner: FollowingChannel, kind: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._owner, self._kind, self._method, self._args, self._kwargs = owner, kind, method, args, kwargs
        self._bound: tuple[grpc.aio.Channel, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        if self._bound is None or self._bound[0] is not channel:
            self._bound = (channel, getattr(channel, self._kind)(self._method, *self._args, **self._kwargs))
        return self._bound[1](*args, **kwargs)
