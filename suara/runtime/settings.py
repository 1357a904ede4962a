"""Settings, declared once each with their environment variable, default, help and the values allowed.

They are grouped by the component that reads them (Settings.tally, .relay, .publish …; what every
process reads sits on Settings itself). `Settings.from_env()` is the one reader of os.environ; the
CLI prints the same table in `--help`, and the README lists it (`settings_markdown()`; a test keeps
the two in step). Every value is checked when the settings are made, however they are made: a bad
one raises SettingError naming the variable, its value and what is allowed (the CLI exits 2).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from suara.runtime.wire import AGGREGATE_MAX_BATCH, MAX_MESSAGE_BYTES

EVENT_LOOPS: Final = ("uvloop", "asyncio")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("json", "console", "auto")
_TRUE: Final = ("1", "true", "yes")
_FALSE: Final = ("0", "false", "no")


class SettingError(ValueError):
    """A setting's value is not one it allows."""

    def __init__(self, env: str, value: object, allowed: str) -> None:
        super().__init__(f"{env}={value!r}: expected {allowed}")
        self.env = env


@dataclass(frozen=True)
class Allowed:
    """The values a setting allows: `what` says it to the operator, `ok` checks a parsed value."""

    what: str
    ok: Callable[[Any], bool] = lambda _: True


def _between(low: float, high: float, what: str) -> Allowed:
    return Allowed(what, lambda v: low <= v <= high)


def _one_of(choices: tuple[str, ...], *, any_case: bool = False) -> Allowed:
    return Allowed("one of " + ", ".join(choices), lambda v: (v.lower() if any_case else v) in choices)


def _is_address(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and not any(c.isspace() for c in host) and port.isdigit() and 0 < int(port) <= 65535


PORT = _between(0, 65535, "a port, 0 to 65535 (0: any free one)")
COUNT = _between(1, float("inf"), "a whole number of 1 or more")
SECONDS = Allowed("a number of seconds above 0", lambda v: v > 0)
GRACE = Allowed("a number of seconds, 0 or more", lambda v: v >= 0)
HOST = Allowed("a host name or address", lambda v: bool(v) and not any(c.isspace() for c in v))
ADDRESS = Allowed("HOST:PORT, the port 1 to 65535", _is_address)
ADDRESSES = Allowed(
    "HOST:PORT, or several comma-separated (instances of one service), each port 1 to 65535",
    lambda v: bool(v.strip(" ,")) and all(_is_address(a.strip()) for a in v.split(",") if a.strip()),
)
PATH = Allowed("a path", lambda v: str(v) != "")
ANY = Allowed("any text")


def _ip_list(value: str) -> bool:
    try:
        for item in filter(None, (i.strip() for i in value.split(","))):
            ipaddress.ip_address(item)
    except ValueError:
        return False
    return True


IP_LIST = Allowed("IP addresses separated by commas (or empty)", _ip_list)


def _setting(env: str, default: Any, help: str, allowed: Allowed) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "allowed": allowed})


def _section(kind: type[_Section], title: str) -> Any:
    return field(default_factory=kind, metadata={"section": title})


def _parse(kind: type, raw: str) -> Any:
    if kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(raw)
        return word in _TRUE
    return kind(raw)


class _Section:
    """Checks every setting it declares when it is made."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            if "env" not in f.metadata:
                continue
            value = getattr(self, f.name)
            allowed: Allowed = f.metadata["allowed"]
            if not _typed(value, type(f.default)) or not allowed.ok(value):
                raise SettingError(f.metadata["env"], value, allowed.what)


def _typed(value: object, kind: type) -> bool:
    if isinstance(value, bool) or kind is bool:
        return type(value) is kind
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


_DB_URL = Allowed("empty, or a postgresql:// URL", lambda v: v == "" or v.startswith(("postgresql://", "postgres://")))


@dataclass(frozen=True)
class DatabaseSettings(_Section):
    url: str = _setting(
        "DATABASE_URL",
        "",
        "PostgreSQL to use; empty: an embedded server kept in SUARA_DATA_DIR/pgdata",
        _DB_URL,
    )
    tally_url: str = _setting(
        "SUARA_TALLY_DATABASE_URL",
        "",
        "tally's own connection, as role suara_tally; empty: DATABASE_URL, or the embedded server's suara_tally",
        _DB_URL,
    )
    aggregate_url: str = _setting(
        "SUARA_AGGREGATE_DATABASE_URL",
        "",
        "aggregate's own connection, as role suara_aggregate; empty: as for tally",
        _DB_URL,
    )
    publish_url: str = _setting(
        "SUARA_PUBLISH_DATABASE_URL",
        "",
        "publish's own connection, as role suara_publish; empty: as for tally",
        _DB_URL,
    )
    pool_size: int = _setting("SUARA_DB_POOL_SIZE", 8, "PostgreSQL connections per service process", COUNT)

    def url_for(self, service: str) -> str:
        """The service's own URL (tally, aggregate, publish); empty when it has none of its own."""
        url: str = getattr(self, f"{service}_url")
        return url


_HTTP_URL = Allowed("empty, or an http(s):// URL", lambda v: v == "" or v.startswith(("http://", "https://")))
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules


def _photo_store(value: str) -> bool:
    if value.startswith("s3://"):
        return bool(_BUCKET.match(value[len("s3://") :].partition("/")[0]))
    return "://" not in value and value == value.strip()


_PHOTO_STORE = Allowed("empty, a directory, or s3://bucket/prefix (a valid S3 bucket name)", _photo_store)


@dataclass(frozen=True)
class TallySettings(_Section):
    host: str = _setting("SUARA_TALLY_HOST", "127.0.0.1", "address the tally gRPC server binds", HOST)
    port: int = _setting(
        "SUARA_TALLY_PORT", 50051, "port of tally's public gRPC listener: devices (0: any free port)", PORT
    )
    internal_port: int = _setting(
        "SUARA_TALLY_INTERNAL_PORT",
        50061,
        "port of tally's internal listener: mutual TLS, for admins and services (0: any free port)",
        PORT,
    )
    tls_cert: str = _setting("SUARA_TALLY_TLS_CERT", "", "tally's server certificate (PEM file)", ANY)
    tls_key: str = _setting("SUARA_TALLY_TLS_KEY", "", "the private key of SUARA_TALLY_TLS_CERT (PEM file)", ANY)
    shared_port: bool = _setting(
        "SUARA_TALLY_SHARED_PORT",
        False,
        "true: several tally processes may serve one port (SO_REUSEPORT), one core each",
        Allowed(", ".join(_TRUE + _FALSE)),
    )
    max_in_flight: int = _setting(
        "SUARA_TALLY_MAX_IN_FLIGHT", 4096, "forms admitted at once; beyond it RESOURCE_EXHAUSTED", COUNT
    )
    commit_batch_max: int = _setting(
        "SUARA_TALLY_COMMIT_BATCH", 500, "most forms one group-commit transaction takes", COUNT
    )
    chains: int = _setting(
        "SUARA_TALLY_CHAINS",
        1,
        "chains the election's submissions are split into (commits into different chains do not wait on "
        "each other); fixed once the first form is stored, and tally refuses to start with another",
        _between(1, 1024, "a count, 1 to 1024"),
    )
    commit_wait_s: float = _setting(
        "SUARA_TALLY_COMMIT_WAIT_S",
        1.0,
        "deadline of a call's database work; past it UNAVAILABLE (safe to resend)",
        SECONDS,
    )
    retry_after_ms: int = _setting(
        "SUARA_TALLY_RETRY_AFTER_MS",
        250,
        "retry-after hint sent with RESOURCE_EXHAUSTED and UNAVAILABLE",
        _between(0, 3_600_000, "milliseconds, 0 to 3600000"),
    )
    photo_max_bytes: int = _setting(
        "SUARA_PHOTO_MAX_BYTES",
        2 * 1024 * 1024,
        "largest form photo accepted",
        _between(1, MAX_MESSAGE_BYTES, f"bytes, 1 to {MAX_MESSAGE_BYTES} (a gRPC message)"),
    )
    photo_store: str = _setting(
        "SUARA_PHOTO_STORE",
        "",
        "where tally keeps form photos (the database keeps only their hash, type and size): a directory, or "
        "s3://bucket/prefix (S3-compatible); every tally process must share it; not in `suara db backup`; "
        "empty: SUARA_DATA_DIR/photos",
        _PHOTO_STORE,
    )
    photo_store_endpoint_url: str = _setting(
        "SUARA_PHOTO_STORE_ENDPOINT_URL",
        "",
        "endpoint of the S3-compatible server of an s3:// SUARA_PHOTO_STORE (SeaweedFS, MinIO, Ceph…); empty: AWS",
        _HTTP_URL,
    )
    device_rate_per_min: float = _setting(
        "SUARA_TALLY_DEVICE_RATE_PER_MIN",
        10.0,
        "forms a minute one device key may send, beyond its burst (resends count); beyond: RESOURCE_EXHAUSTED",
        _between(0.001, 1_000_000, "forms a minute, above 0"),
    )
    device_burst: int = _setting(
        "SUARA_TALLY_DEVICE_BURST",
        100,
        "forms one device key may send at once (a whole night's outbox is a few dozen)",
        COUNT,
    )
    peer_rate: float = _setting(
        "SUARA_TALLY_PEER_RATE",
        5000.0,
        "calls a second from one address, per tally process (phones behind one NAT share it; "
        "the load test is one address)",
        _between(0.001, 1_000_000_000, "calls a second, above 0"),
    )
    peer_burst: int = _setting(
        "SUARA_TALLY_PEER_BURST", 10000, "calls one address may make at once, per tally process", COUNT
    )
    trusted_proxies: str = _setting(
        "SUARA_TALLY_TRUSTED_PROXIES",
        "",
        "comma-separated IP addresses of the proxies in front of tally (Envoy): for their calls the per-address "
        "limit counts the address they put last in x-forwarded-for; empty: none",
        IP_LIST,
    )
    chain_key: str = _setting(
        "SUARA_TALLY_CHAIN_KEY",
        "",
        "the key file tally signs its chain heads with (Ed25519, created if missing; never in the database); "
        "empty: SUARA_DATA_DIR/chain.key.json",
        ANY,
    )
    metrics_port: int = _setting(
        "SUARA_TALLY_METRICS_PORT",
        9101,
        "port of tally's Prometheus /metrics (HTTP, on SUARA_TALLY_HOST; 0: any free port; `suara up` gives each "
        "tally process its own)",
        PORT,
    )
    verify_threads: int = _setting(
        "SUARA_VERIFY_THREADS",
        2,
        "threads verifying a batch's Ed25519 signatures beside the event loop (one form: inline)",
        COUNT,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.photo_store_endpoint_url and not self.photo_store.startswith("s3://"):
            raise SettingError(
                "SUARA_PHOTO_STORE_ENDPOINT_URL",
                self.photo_store_endpoint_url,
                "empty unless SUARA_PHOTO_STORE is s3://bucket/prefix",
            )


@dataclass(frozen=True)
class AggregateSettings(_Section):
    host: str = _setting(
        "SUARA_AGGREGATE_HOST", "127.0.0.1", "address the aggregate gRPC server (`suara aggregate serve`) binds", HOST
    )
    port: int = _setting(
        "SUARA_AGGREGATE_PORT", 50052, "port of aggregate's public listener: officials' recaps (0: any free port)", PORT
    )
    internal_port: int = _setting(
        "SUARA_AGGREGATE_INTERNAL_PORT",
        50062,
        "port of aggregate's internal listener: mutual TLS, for services (0: any free port)",
        PORT,
    )
    tls_cert: str = _setting("SUARA_AGGREGATE_TLS_CERT", "", "aggregate's server certificate (PEM file)", ANY)
    tls_key: str = _setting(
        "SUARA_AGGREGATE_TLS_KEY", "", "the private key of SUARA_AGGREGATE_TLS_CERT (PEM file)", ANY
    )
    metrics_port: int = _setting(
        "SUARA_AGGREGATE_METRICS_PORT",
        9102,
        "port of aggregate's Prometheus /metrics (HTTP, on SUARA_AGGREGATE_HOST; 0: any free port)",
        PORT,
    )


@dataclass(frozen=True)
class PeerSettings(_Section):
    """Where this process finds the other services."""

    aggregate: str = _setting(
        "SUARA_AGGREGATE_ADDRESS",
        "127.0.0.1:50062",
        "host:port of aggregate's internal listener, where the relay delivers and publish reads; several "
        "comma-separated (every aggregate instance): calls go to those reporting SERVING",
        ADDRESSES,
    )
    tally: str = _setting(
        "SUARA_TALLY_ADDRESS",
        "127.0.0.1:50061",
        "host:port of tally's internal listener, where publish reads the chain head and photos",
        ADDRESS,
    )


@dataclass(frozen=True)
class RelaySettings(_Section):
    credential: str = _setting(
        "SUARA_RELAY_CREDENTIAL",
        "",
        "the relay's writer credential: a client certificate and key in one PEM file (or, with SUARA_INSECURE, "
        "a `suara service issue` file); empty: SUARA_DATA_DIR/relay.key.json",
        ANY,
    )
    batch: int = _setting(
        "SUARA_RELAY_BATCH",
        1000,
        "most outbox rows the relay sends in one ApplyUpdates call",
        _between(1, AGGREGATE_MAX_BATCH, f"1 to {AGGREGATE_MAX_BATCH} (aggregate's limit per call)"),
    )


@dataclass(frozen=True)
class SiteSettings(_Section):
    dir: Path = _setting(
        "SUARA_SITE_DIR", Path("site"), "where publish writes the static site (and serves it from)", PATH
    )
    http_port: int = _setting("SUARA_HTTP_PORT", 8080, "port of `suara publish serve` (the public site, locally)", PORT)


@dataclass(frozen=True)
class PublishSettings(_Section):
    to: str = _setting(
        "SUARA_PUBLISH_TO",
        "",
        "publish's sink: empty for SUARA_SITE_DIR, or s3://bucket/prefix (S3-compatible)",
        Allowed("empty, or s3://bucket/prefix", lambda v: v == "" or (v.startswith("s3://") and len(v) > 5)),
    )
    s3_endpoint_url: str = _setting(
        "SUARA_S3_ENDPOINT_URL",
        "",
        "endpoint of an S3-compatible server (MinIO, Ceph…); empty: AWS",
        Allowed("empty, or an http(s):// URL", lambda v: v == "" or v.startswith(("http://", "https://"))),
    )
    public_url: str = _setting(
        "SUARA_PUBLIC_URL",
        "",
        "the site's public base URL (https://…), as readers reach it; with an s3:// SUARA_PHOTO_STORE, the TPS "
        "files link each photo at SUARA_PUBLIC_URL/foto/{aa}/{sha256} unless SUARA_PHOTO_PUBLIC_URL says otherwise",
        _HTTP_URL,
    )
    photo_public_url: str = _setting(
        "SUARA_PHOTO_PUBLIC_URL",
        "",
        "with an s3:// SUARA_PHOTO_STORE: the public URL of that bucket and prefix, where the TPS files link each "
        "photo (URL/{aa}/{sha256}, nothing copied); empty: SUARA_PUBLIC_URL/foto",
        _HTTP_URL,
    )
    host: str = _setting("SUARA_PUBLISH_HOST", "127.0.0.1", "address publish's gRPC status server binds", HOST)
    port: int = _setting("SUARA_PUBLISH_PORT", 50053, "port of publish's gRPC status server (0: any free)", PORT)
    tls_cert: str = _setting("SUARA_PUBLISH_TLS_CERT", "", "publish's server certificate (PEM file)", ANY)
    tls_key: str = _setting("SUARA_PUBLISH_TLS_KEY", "", "the private key of SUARA_PUBLISH_TLS_CERT (PEM file)", ANY)
    metrics_port: int = _setting(
        "SUARA_PUBLISH_METRICS_PORT",
        9103,
        "port of publish's Prometheus /metrics (HTTP, on SUARA_PUBLISH_HOST; 0: any free port)",
        PORT,
    )
    interval_s: float = _setting(
        "SUARA_PUBLISH_INTERVAL_S",
        1.0,
        "how often publish looks for aggregate's changes (a cycle runs only on change)",
        SECONDS,
    )
    bulk_interval_s: float = _setting(
        "SUARA_PUBLISH_BULK_INTERVAL_S",
        300.0,
        "how often publish rewrites the bulk downloads (every TPS of a contest in one gzipped CSV), at most",
        SECONDS,
    )
    credential: str = _setting(
        "SUARA_PUBLISH_CREDENTIAL",
        "",
        "publish's reader credential: a client certificate and key in one PEM file (or, with SUARA_INSECURE, "
        "a `suara service issue` file); empty: SUARA_DATA_DIR/publish.key.json",
        ANY,
    )


@dataclass(frozen=True)
class TlsSettings(_Section):
    """What every server and client of a deployment shares; each service's own certificate is in its section."""

    insecure: bool = _setting(
        "SUARA_INSECURE",
        False,
        "true: plaintext gRPC, no TLS (debugging only: credentials travel in clear and can be replayed)",
        Allowed(", ".join(_TRUE + _FALSE)),
    )
    ca_file: str = _setting(
        "SUARA_CA_FILE",
        "",
        "the deployment's CA (PEM): clients verify servers by it, servers verify client certificates by it",
        ANY,
    )
    crl_file: str = _setting(
        "SUARA_CRL_FILE",
        "",
        "the CA's revocation list (PEM, `suara pki revoke`), re-read when it changes; empty: nothing revoked",
        ANY,
    )


@dataclass(frozen=True)
class LogSettings(_Section):
    level: str = _setting(
        "SUARA_LOG_LEVEL", "info", "debug, info, warning or error", _one_of(LOG_LEVELS, any_case=True)
    )
    format: str = _setting(
        "SUARA_LOG_FORMAT", "auto", "json, console, or auto (json unless a terminal)", _one_of(LOG_FORMATS)
    )
    max_bytes: int = _setting(
        "SUARA_LOG_MAX_BYTES",
        100_000_000,
        "`suara up`: a child's log file is rotated (<name>.log.1 …) when it would grow beyond this",
        _between(4096, float("inf"), "a number of bytes, 4096 or more"),
    )
    backups: int = _setting(
        "SUARA_LOG_BACKUPS", 5, "`suara up`: rotated log files kept per child (0: none)", _between(0, 1000, "0 to 1000")
    )
    to_stdout: bool = _setting(
        "SUARA_LOG_TO_STDOUT",
        False,
        "`suara up`: children log to its stdout instead of files (containers)",
        Allowed(", ".join(_TRUE + _FALSE)),
    )


@dataclass(frozen=True)
class Settings(_Section):
    """Every setting: those every process reads, then one section per component."""

    data_dir: Path = _setting(
        "SUARA_DATA_DIR", Path(".suara"), "local state: the embedded database, keys, the admin credential", PATH
    )
    event_loop: str = _setting(
        "SUARA_EVENT_LOOP",
        "uvloop",
        "event loop of every suara process: uvloop (less CPU per call) or asyncio",
        _one_of(EVENT_LOOPS),
    )
    shutdown_grace_s: float = _setting(
        "SUARA_SHUTDOWN_GRACE_S", 10.0, "on SIGTERM, how long in-flight calls may take to finish", GRACE
    )
    metrics: str = _setting(
        "SUARA_METRICS",
        "on",
        "on: every service process counts its calls and serves Prometheus metrics (docs/metrics.md) on its "
        "SUARA_*_METRICS_PORT; off: neither",
        _one_of(("on", "off")),
    )
    log: LogSettings = _section(LogSettings, "logging")
    tls: TlsSettings = _section(TlsSettings, "TLS")
    database: DatabaseSettings = _section(DatabaseSettings, "database")
    tally: TallySettings = _section(TallySettings, "tally")
    relay: RelaySettings = _section(RelaySettings, "relay")
    aggregate: AggregateSettings = _section(AggregateSettings, "aggregate")
    publish: PublishSettings = _section(PublishSettings, "publish")
    site: SiteSettings = _section(SiteSettings, "site")
    peers: PeerSettings = _section(PeerSettings, "addresses")

    @property
    def metrics_on(self) -> bool:
        return self.metrics == "on"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From the environment (unset or empty: the default). A bad value raises SettingError."""
        env = os.environ if env is None else env

        def build(kind: type[_Section]) -> Any:
            values: dict[str, Any] = {}
            for f in fields(kind):  # type: ignore[arg-type]  # every section is a dataclass
                if "section" in f.metadata:
                    values[f.name] = build(f.default_factory)  # type: ignore[arg-type]  # a section class
                    continue
                raw = env.get(f.metadata["env"])
                if raw is None or raw == "":
                    continue
                try:
                    values[f.name] = _parse(type(f.default), raw)
                except ValueError:
                    raise SettingError(f.metadata["env"], raw, f.metadata["allowed"].what) from None
            return kind(**values)

        settings: Settings = build(cls)
        return settings

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, help) of every setting, in table order."""
        return [(env, default, help) for _, env, default, help in _rows()]


def _rows() -> list[tuple[str, str, str, str]]:
    """(its group, environment variable, default, help) of every setting, in table order."""
    return [(title, f.metadata["env"], _shown(f.default), f.metadata["help"]) for title, f in _walk(Settings, "")]


def _walk(kind: type[_Section], title: str) -> Iterator[tuple[str, Any]]:
    for f in fields(kind):  # type: ignore[arg-type]  # every section is a dataclass
        if "section" in f.metadata:
            yield from _walk(f.default_factory, f.metadata["section"])  # type: ignore[arg-type]  # a section class
        else:
            yield title or "every process", f


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def settings_help() -> str:
    rows = _rows()
    width = max(len(env) for _, env, _, _ in rows)
    lines = ["environment:"]
    current = None
    for title, env, default, help in rows:
        if title != current:
            current = title
            lines.append(f" {title}:")
        shown = f" (default: {default})" if default else ""
        lines.append(f"  {env.ljust(width)}  {help}{shown}")
    return "\n".join(lines)


def settings_markdown() -> str:
    """The README's configuration table."""
    lines = ["| variable | group | default | meaning |", "|---|---|---|---|"]
    for title, env, default, help in _rows():
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| `{env}` | {title} | {shown} | {help} |")
    return "\n".join(lines)
