"""Who may call suara.v1.AggregateService: writers apply, a federated instance applies its areas,
readers read, officials sign their own recaps."""

from __future__ import annotations

from suara.client import service_names
from suara.runtime.auth.certificate import PeerCertificates
from suara.runtime.auth.interceptor import AuthInterceptor
from suara.runtime.auth.service_tokens import ServiceTokens
from suara.runtime.auth.store import PgCredentialStore
from suara.runtime.database import Database

_SERVICE = service_names.AGGREGATE
_WRITES = frozenset({"ApplyUpdates"})
_FEDERATION = frozenset({"ApplyAreaUpdates"})  # a province instance feeding the national one
# An official calls these with a signed payload, checked by the handler, instead of a service credential.
_OFFICIAL_METHODS = frozenset({"SubmitRecap"})


def _full(name: str) -> str:
    return service_names.method_path(_SERVICE, name)


def aggregate_rules(federation: str = "federation") -> dict[str, str]:
    """The role each method needs: writers apply TPS updates, `federation` area updates, readers read.

    Plaintext mode's token credentials know only writer and reader: there a writer federates."""

    def role(name: str) -> str:
        return "writer" if name in _WRITES else federation if name in _FEDERATION else "reader"

    return {_full(m.name): role(m.name) for m in _SERVICE.methods if m.name not in _OFFICIAL_METHODS}


def aggregate_self_authenticated() -> frozenset[str]:
    """Aggregate methods an official calls with a signed payload instead of a service credential."""
    return frozenset(_full(name) for name in _OFFICIAL_METHODS)


def access_interceptor(db: Database, certificates: PeerCertificates | None = None) -> AuthInterceptor:
    """Every call needs a credential of the role its method needs: a client certificate (TLS,
    `certificates`), or, when None (plaintext debugging), a service token checked against `db`."""
    if certificates is not None:
        return AuthInterceptor(certificates, aggregate_rules(), open_methods=aggregate_self_authenticated())
    tokens = ServiceTokens(PgCredentialStore(db))
    return AuthInterceptor(tokens, aggregate_rules(federation="writer"), open_methods=aggregate_self_authenticated())
