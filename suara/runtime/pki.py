"""A deployment's private certificate authority: the CA, the certificates it issues, and its revocation list.

Every gRPC hop in suara is TLS; services call each other with client certificates whose role
(writer, reader, federation, admin) is written into the certificate as a SAN URI
`urn:suara:role:<role>`, so no bearer secret crosses the wire and a stolen listing of any table
grants nothing. A client certificate also names the election it serves (`urn:suara:election:<id>`):
a rehearsal's credential is refused on the real night, as a rehearsal's signed form is. The CA
signs a CRL; a revoked serial is refused by every process that reads it.

Keys are ECDSA P-256 (small, fast handshakes, supported by every TLS stack a phone has). Only
`cryptography` is used: no gRPC here, so the CLI, the services and the tests share it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from suara.runtime.secrets_file import write_secret

CLIENT_ROLES: Final = ("writer", "reader", "federation", "admin")
ROLE_URI_PREFIX: Final = "urn:suara:role:"
ELECTION_URI_PREFIX: Final = "urn:suara:election:"
_ELECTION: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # the registry's election id (check_election_id)
CA_DAYS: Final = 3650
LEAF_DAYS: Final = 397  # the longest lifetime browsers accept for a leaf; rotation is routine, not an event
# A server's certificate lives a month: gRPC's Python client exposes nothing of its TLS verification, so
# clients cannot consult the CRL for a server, and a short life is what bounds trust in a revoked one.
SERVER_DAYS: Final = 30
RENEW_BEFORE: Final = datetime.timedelta(days=10)  # `suara up` reissues what expires sooner than this
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Certificates are valid from a little before now: a peer whose clock is slightly behind still accepts them.
_BACKDATE: Final = datetime.timedelta(minutes=5)
_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n?", re.DOTALL)


class PkiError(ValueError):
    """A PKI request that cannot be done as asked (bad name, unknown role, missing CA); the message says why."""


@dataclass(frozen=True)
class KeyPair:
    """One certificate with its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the key is not an EC private key")
        return key

    def bundle(self) -> bytes:
        """Certificate and key in one PEM file: what an operator's key file (the admin's) holds."""
        return self.cert_pem + self.key_pem


def split_bundle(pem: bytes) -> KeyPair:
    """The certificate and the key of a bundle written by `KeyPair.bundle()` (either order)."""
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(pem)]
    certs = [block for kind, block in blocks if kind == b"CERTIFICATE"]
    keys = [block for kind, block in blocks if kind.endswith(b"PRIVATE KEY")]
    if len(certs) != 1 or len(keys) != 1:
        raise PkiError("a key bundle holds exactly one CERTIFICATE and one PRIVATE KEY, in PEM")
    return KeyPair(certs[0], keys[0])


def load_pair(cert_path: Path, key_path: Path) -> KeyPair:
    return KeyPair(cert_path.read_bytes(), key_path.read_bytes())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _checked_name(name: str) -> str:
    if not _NAME.match(name):
        raise PkiError(f"name {name!r}: use 1-63 lower-case letters, digits, '.', '_' or '-'")
    return name


def create_ca(name: str = "suara private CA", days: int = CA_DAYS) -> KeyPair:
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _leaf(
    ca: KeyPair, name: str, san: list[x509.GeneralName], usages: Sequence[x509.ObjectIdentifier], days: int
) -> KeyPair:
    key = _new_key()
    ca_cert = ca.certificate
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$", host):
            raise PkiError(f"host {host!r} is neither an IP address nor a DNS name") from None
        return x509.DNSName(host)


def issue_server(ca: KeyPair, name: str, hosts: Sequence[str], days: int = SERVER_DAYS) -> KeyPair:
    """A server certificate for `hosts` (DNS names and IP addresses clients dial)."""
    if not hosts:
        raise PkiError("a server certificate needs at least one host (a DNS name or an IP address)")
    return _leaf(ca, _checked_name(name), [_host_name(h) for h in hosts], [ExtendedKeyUsageOID.SERVER_AUTH], days)


def issue_peer(ca: KeyPair, name: str, hosts: Sequence[str], days: int = SERVER_DAYS) -> KeyPair:
    """A certificate that both serves `hosts` and dials others with it: a member of a cluster whose members
    call each other (etcd's peers, Patroni's REST API), TLS client and server at once. It names no suara
    role: suara's services refuse it as a client."""
    if not hosts:
        raise PkiError("a peer certificate needs at least one host (a DNS name or an IP address)")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _leaf(ca, _checked_name(name), [_host_name(h) for h in hosts], usages, days)


def issue_client(ca: KeyPair, name: str, role: str, days: int = LEAF_DAYS, election: str = "") -> KeyPair:
    """A client certificate naming its holder (CN), role (SAN URI urn:suara:role:<role>) and, when given,
    the election it is for (SAN URI urn:suara:election:<id>; services refuse a certificate of another)."""
    if role not in CLIENT_ROLES:
        raise PkiError(f"role must be one of {', '.join(CLIENT_ROLES)}, not {role!r}")
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role)]
    if election:
        if not _ELECTION.fullmatch(election):
            raise PkiError(
                f"election {election!r}: use the registry's election id (`suara registry show` prints it): "
                "1 to 64 lowercase letters, digits, '.', '_' or '-'"
            )
        san.append(x509.UniformResourceIdentifier(ELECTION_URI_PREFIX + election))
    return _leaf(ca, _checked_name(name), san, [ExtendedKeyUsageOID.CLIENT_AUTH], days)


def _uris(cert: x509.Certificate, prefix: str) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        uri.removeprefix(prefix)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(prefix)
    ]


def role_of(cert: x509.Certificate) -> str | None:
    """The role a client certificate was issued for; None if it names none (a server certificate)."""
    roles = _uris(cert, ROLE_URI_PREFIX)
    return roles[0] if len(roles) == 1 and roles[0] in CLIENT_ROLES else None


def election_of(cert: x509.Certificate) -> str | None:
    """The election a client certificate was issued for: "" if it names none, None if it names several."""
    elections = _uris(cert, ELECTION_URI_PREFIX)
    return (elections[0] if len(elections) == 1 else None) if elections else ""


def renewal_due(cert: x509.Certificate, now: datetime.datetime | None = None) -> bool:
    """Whether `cert` expires within RENEW_BEFORE (or already has)."""
    return cert.not_valid_after_utc - (now or _now()) < RENEW_BEFORE


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


class Crl:
    """The CA's certificate revocation list (X.509 CRL, PEM)."""

    @staticmethod
    def empty(ca: KeyPair) -> bytes:
        return Crl._build(ca, [])

    @staticmethod
    def revoke(ca: KeyPair, crl_pem: bytes, serial: int) -> bytes:
        """A new CRL with `serial` added (kept once if it was already there)."""
        crl = x509.load_pem_x509_crl(crl_pem)
        entries = [(r.serial_number, r.revocation_date_utc) for r in crl]
        if serial not in {s for s, _ in entries}:
            entries.append((serial, _now()))
        return Crl._build(ca, entries)

    @staticmethod
    def revoked_serials(crl_pem: bytes, ca_cert: x509.Certificate) -> frozenset[int]:
        """The serials the CA has revoked; ValueError if the CRL is not the CA's (a forged list revokes nothing
        and, worse, could un-revoke: refuse it)."""
        crl = x509.load_pem_x509_crl(crl_pem)
        public_key = ca_cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public_key):
            raise ValueError("the CRL is not signed by this CA")
        return frozenset(r.serial_number for r in crl)

    @staticmethod
    def _build(ca: KeyPair, entries: list[tuple[int, datetime.datetime]]) -> bytes:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.certificate.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + datetime.timedelta(days=30))
        )
        for serial, when in entries:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(ca.private_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class PkiDir:
    """A deployment's PKI directory, as `suara pki` manages it:

        ca.crt  ca.key (0600)  crl.pem  issued/<name>.crt  issued/<name>.key (0600)  log.jsonl

    Only the machine that issues certificates needs ca.key; every process needs ca.crt and crl.pem.
    log.jsonl records every init, issue and revoke (when, who, what, the serial), one JSON object a
    line, only ever appended: the files are replaced on renewal, the log keeps what was issued to whom.
    `actor` is who is recorded as acting (the CLI passes its operator, `cli:<user>@<host>`).
    """

    def __init__(self, path: Path, actor: str = "unknown") -> None:
        self.path = path
        self.actor = actor

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    @property
    def crl(self) -> Path:
        return self.path / "crl.pem"

    def cert(self, name: str) -> Path:
        return self.path / "issued" / f"{_checked_name(name)}.crt"

    def key(self, name: str) -> Path:
        return self.path / "issued" / f"{_checked_name(name)}.key"

    @property
    def log(self) -> Path:
        return self.path / "log.jsonl"

    def exists(self) -> bool:
        return self.ca_cert.exists() and self.ca_key.exists()

    def init(self, name: str = "suara private CA") -> bool:
        """Create the CA and an empty CRL; False (changing nothing) if the directory already has a CA."""
        if self.exists():
            return False
        ca = create_ca(name)
        write_secret(self.ca_key, ca.key_pem.decode())
        _write_public(self.ca_cert, ca.cert_pem)
        _write_public(self.crl, Crl.empty(ca))
        self._record("init", name, ca.certificate, {})
        return True

    def authority(self) -> KeyPair:
        if not self.exists():
            raise PkiError(f"{self.path} has no CA; run `suara pki init --dir {self.path}` first")
        return load_pair(self.ca_cert, self.ca_key)

    def issue_server(self, name: str, hosts: Sequence[str], days: int = SERVER_DAYS) -> KeyPair:
        return self._save(name, issue_server(self.authority(), name, hosts, days))

    def issue_peer(self, name: str, hosts: Sequence[str], days: int = SERVER_DAYS) -> KeyPair:
        return self._save(name, issue_peer(self.authority(), name, hosts, days))

    def issue_client(self, name: str, role: str, days: int = LEAF_DAYS, election: str = "") -> KeyPair:
        return self._save(name, issue_client(self.authority(), name, role, days, election))

    def revoke(self, name: str) -> int:
        """Revoke the certificate issued under `name`; its serial. The CRL file is replaced atomically, so a
        process watching it never reads half of one."""
        path = self.cert(name)
        if not path.exists():
            raise PkiError(f"no certificate named {name!r} in {self.path / 'issued'}")
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        serial = cert.serial_number
        ca = self.authority()
        current = self.crl.read_bytes() if self.crl.exists() else Crl.empty(ca)
        _write_public(self.crl, Crl.revoke(ca, current, serial))
        self._record("revoke", name, cert, _holder(cert))
        return int(serial)

    def _save(self, name: str, pair: KeyPair) -> KeyPair:
        write_secret(self.key(name), pair.key_pem.decode())
        _write_public(self.cert(name), pair.cert_pem)
        self._record("issue", name, pair.certificate, _holder(pair.certificate))
        return pair

    def _record(self, action: str, name: str, cert: x509.Certificate, holder: dict[str, Any]) -> None:
        """One line appended to log.jsonl and on disk before the command reports success."""
        entry = {"at": _now().isoformat(), "actor": self.actor, "action": action, "name": name, **holder}
        line = (json.dumps({**entry, "serial": f"{cert.serial_number:x}"}) + "\n").encode()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.fchmod(fd, 0o644)  # public, whatever the umask: it holds no secret
            # One write of one short line: appended whole, even with another writer at the same time.
            if os.write(fd, line) != len(line):
                raise OSError(f"{self.log}: a short write; the last line is incomplete")
            os.fsync(fd)
        finally:
            os.close(fd)


def _holder(cert: x509.Certificate) -> dict[str, Any]:
    """What a log line says a certificate is for: a client's role, or the hosts a server is dialled by."""
    role = role_of(cert)
    if role is not None:
        return {"role": role, **({"election": e} if (e := election_of(cert)) else {})}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {"hosts": []}
    return {"hosts": [str(n.value) for n in san if isinstance(n, x509.DNSName | x509.IPAddress)]}  # as issued


def _write_public(path: Path, data: bytes) -> None:
    """Certificates and CRLs are public: 0644, written beside and renamed over, never torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)
