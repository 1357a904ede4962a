"""Who may call suara.v1.AggregateService: writers apply, readers read, officials sign their own recaps."""

from __future__ import annotations

from suara.client import service_names
from suara.runtime.auth.credential import Role
from suara.runtime.auth.interceptor import AuthInterceptor
from suara.runtime.auth.service_tokens import ServiceTokens
from suara.runtime.auth.store import PgCredentialStore
from suara.runtime.database import Database

_SERVICE = service_names.AGGREGATE
_WRITES = frozenset({"ApplyUpdates", "ApplyAreaUpdates"})
# An official calls these with a signed payload, checked by the handler, instead of a service credential.
_OFFICIAL_METHODS = frozenset({"SubmitRecap"})


def _full(name: str) -> str:
    return service_names.method_path(_SERVICE, name)


def aggregate_rules() -> dict[str, Role]:
    """The role each method needs: writers apply, readers read."""
    return {
        _full(m.name): ("writer" if m.name in _WRITES else "reader")
        for m in _SERVICE.methods
        if m.name not in _OFFICIAL_METHODS
    }


def aggregate_self_authenticated() -> frozenset[str]:
    """Aggregate methods an official calls with a signed payload instead of a service credential."""
    return frozenset(_full(name) for name in _OFFICIAL_METHODS)


def access_interceptor(db: Database) -> AuthInterceptor:
    """Every call needs a service credential of the role its method needs, checked against `db`."""
    return AuthInterceptor(
        ServiceTokens(PgCredentialStore(db)), aggregate_rules(), open_methods=aggregate_self_authenticated()
    )
