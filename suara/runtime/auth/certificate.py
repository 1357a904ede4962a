"""The proof under TLS: the caller's client certificate, verified by the TLS handshake of an internal
(mutual-TLS) listener. Its role is the SAN URI urn:suara:role:<role> (suara.runtime.pki.role_of); a
certificate the CA has revoked (its CRL, see suara.runtime.tls.Revocations), or one issued for another
election than the one the service counts (urn:suara:election:<id>), is refused.

Nothing travels in the call's metadata, so there is no bearer secret on the wire to capture or replay:
a recorded call sent again on a new connection meets a handshake it cannot complete without the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from cryptography import x509

from suara.runtime import pki
from suara.runtime.auth.credential import ServiceCredential
from suara.runtime.auth.principal import Call, Principal
from suara.runtime.errors import PermissionDenied, Unauthenticated
from suara.runtime.settings import SettingError, Settings
from suara.runtime.tls import ClientTls, Revocations, client_tls

_CACHE_MAX: Final = 10_000  # certificates parsed, by their PEM: a deployment has a handful of callers


@dataclass(frozen=True)
class CertCredential:
    """A service's or an admin's client certificate with its key (one PEM file holding both).

    It has a credential's shape (id, role, per-call metadata) so that a caller holds either it or, in
    plaintext debugging, a token credential; under TLS the metadata is empty: the handshake proves it."""

    key_pair: pki.KeyPair
    id: str
    role: str
    path: Path | None = None  # the file it was read from: channels follow it when it is renewed

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "") -> CertCredential:
        pair = pki.split_bundle(pem)
        cert = pair.certificate
        role = pki.role_of(cert)
        if role is None:
            raise ValueError(f"{source}: the certificate names no suara role (a SAN URI {pki.ROLE_URI_PREFIX}<role>)")
        return cls(pair, pki.common_name(cert) or f"serial {cert.serial_number:x}", role)

    @classmethod
    def load(cls, path: Path) -> CertCredential:
        return replace(cls.from_pem(path.read_bytes(), str(path)), path=path)

    def metadata(self, method: str = "") -> tuple[tuple[str, str], ...]:
        return ()


def load_credential(path: Path) -> CertCredential | ServiceCredential:
    """A caller's credential file: a certificate and key (PEM), or a plaintext-mode token credential (JSON)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        return ServiceCredential.load(path)
    return replace(CertCredential.from_pem(data, str(path)), path=path)


def credential_tls(settings: Settings, credential: CertCredential | ServiceCredential) -> ClientTls | None:
    """The channel TLS a caller holding `credential` needs: its certificate over mutual TLS, or None in
    plaintext mode, where only a token credential proves anything (SettingError for a mismatch)."""
    if isinstance(credential, CertCredential):
        if settings.tls.insecure:
            raise SettingError("SUARA_INSECURE", "1", "a token credential file (a certificate needs TLS)")
        return client_tls(settings, credential.key_pair, credential.path)
    if not settings.tls.insecure:
        raise SettingError(
            "SUARA_INSECURE",
            "0",
            f"a client certificate for {credential.name} under TLS (a token credential "
            "proves nothing a network cannot replay; it is taken only with SUARA_INSECURE=1)",
        )
    return None


@dataclass(frozen=True)
class _Peer:
    serial: int
    name: str
    role: str | None
    election: str | None


class PeerCertificates:
    """Proves the caller by the client certificate of its connection (present only on the internal
    listener, which requires one). `internal_address` is named to a caller who came without one.

    `election(claimed)` answers the election the service counts (the registry's, re-read when a caller
    claims another: suara.registry.catalog.RegistryView.election); None checks no election."""

    name = "client certificate"

    def __init__(
        self,
        revocations: Revocations,
        internal_address: str = "",
        election: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self.revocations = revocations
        self.internal_address = internal_address
        self.election = election
        self._parsed: dict[bytes, _Peer] = {}

    async def authenticate(self, call: Call) -> Principal:
        pems = list(call.context.auth_context().get("x509_pem_cert") or ())
        if not pems:
            where = f" ({self.internal_address})" if self.internal_address else ""
            raise Unauthenticated(
                f"{call.method} needs a client certificate: call the service's internal address{where} "
                "over mutual TLS with a certificate from the deployment's CA (`suara pki issue --role …`)"
            )
        peer = self._peer(pems[0])
        if self.revocations.is_revoked(peer.serial):
            raise PermissionDenied(
                f"the certificate {peer.name} (serial {peer.serial:x}) is revoked; "
                "ask for a new one (`suara pki issue`)"
            )
        if peer.role is None:
            raise PermissionDenied(f"the certificate {peer.name} names no suara role ({pki.ROLE_URI_PREFIX}<role>)")
        if self.election is not None:
            serving = await self.election(peer.election or "")
            if peer.election != serving:
                said = f"election {peer.election!r}" if peer.election else "no election"
                raise PermissionDenied(
                    f"the certificate {peer.name} is for {said}, and this service counts election {serving!r}: "
                    f"ask for one of this election (`suara pki issue {peer.name} --role {peer.role} "
                    f"--election {serving}`)"
                )
        return Principal(peer.name, peer.role)

    def _peer(self, pem: bytes) -> _Peer:
        found = self._parsed.get(pem)
        if found is None:
            cert = x509.load_pem_x509_certificate(pem)
            name = pki.common_name(cert) or f"serial {cert.serial_number:x}"
            found = _Peer(cert.serial_number, name, pki.role_of(cert), pki.election_of(cert))
            if len(self._parsed) >= _CACHE_MAX:
                self._parsed.clear()
            self._parsed[pem] = found
        return found
