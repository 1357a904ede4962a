"""The private CA: what it issues is judged by OpenSSL (Python's `ssl`), not by the code that issued it.

Each test runs a real TLS 1.3 handshake over a loopback socket pair between an `ssl` server and client
configured only from the PEM files the CA wrote: if OpenSSL accepts or refuses, so will every TLS peer.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from suara.runtime.pki import (
    CLIENT_ROLES,
    Crl,
    KeyPair,
    PkiDir,
    PkiError,
    create_ca,
    issue_client,
    issue_peer,
    issue_server,
    role_of,
    split_bundle,
)


def _write(tmp: Path, name: str, pair: KeyPair) -> tuple[str, str]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return str(cert), str(key)


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[dict[str, object] | None, str | None, BaseException | None]:
    """(the client certificate as the server saw it, the TLS version, the client's error) of one handshake."""
    a, b = socket.socketpair()
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    error: BaseException | None = None
    version = None
    try:
        with client.wrap_socket(b, server_hostname=server_hostname) as tls:
            version = tls.version()
            tls.sendall(b"x")
    except (ssl.SSLError, OSError) as exc:
        error = exc
    finally:
        b.close()
        thread.join(10)
    peer = seen.get("peer")
    return (peer if isinstance(peer, dict) else None), version, error or seen.get("error")  # type: ignore[return-value]


def _server_context(tmp: Path, ca: KeyPair, server: KeyPair, crl: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(*_write(tmp, "server", server))
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    if crl is not None:
        crl_file = tmp / "crl.pem"  # cadata takes certificates only; a CRL loads from a file
        crl_file.write_bytes(crl)
        ctx.load_verify_locations(cafile=str(crl_file))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_context(tmp: Path, trusted: KeyPair, client: KeyPair) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=trusted.cert_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(*_write(tmp, "client", client))
    return ctx


def test_issued_certificates_complete_a_mutual_tls_handshake(tmp_path: Path) -> None:
    ca = create_ca()
    server = issue_server(ca, "tally-1", ["localhost", "127.0.0.1"])
    client = issue_client(ca, "relay", "writer")
    peer, version, error = _handshake(_server_context(tmp_path, ca, server), _client_context(tmp_path, ca, client))
    assert error is None and version == "TLSv1.3"
    assert peer is not None
    assert ("URI", "urn:suara:role:writer") in peer["subjectAltName"]  # type: ignore[operator]
    assert (("commonName", "relay"),) in peer["subject"]  # type: ignore[operator]


def test_a_peer_certificate_serves_and_dials_where_a_server_certificate_cannot_dial(tmp_path: Path) -> None:
    """etcd members and Patroni call each other with one certificate each: OpenSSL must take it both ways."""
    ca = create_ca()
    member, other = issue_peer(ca, "db1", ["127.0.1.1"]), issue_peer(ca, "db2", ["127.0.1.2"])
    peer, version, error = _handshake(
        _server_context(tmp_path, ca, member), _client_context(tmp_path, ca, other), server_hostname="127.0.1.1"
    )
    assert error is None and version == "TLSv1.3"
    assert peer is not None and (("commonName", "db2"),) in peer["subject"]  # type: ignore[operator]
    assert role_of(other.certificate) is None  # no suara role: no service takes it as a client
    server_only = issue_server(ca, "db3", ["127.0.1.3"])
    _, _, refused = _handshake(
        _server_context(tmp_path, ca, member), _client_context(tmp_path, ca, server_only), server_hostname="127.0.1.1"
    )
    assert refused is not None  # a server certificate is no client's


def test_a_server_certificate_names_only_its_hosts(tmp_path: Path) -> None:
    ca = create_ca()
    server = issue_server(ca, "tally-1", ["tally.example", "10.0.0.7"])
    client = issue_client(ca, "relay", "writer")
    _, _, wrong = _handshake(
        _server_context(tmp_path, ca, server), _client_context(tmp_path, ca, client), server_hostname="other.example"
    )
    assert isinstance(wrong, ssl.SSLCertVerificationError)
    _, _, right = _handshake(
        _server_context(tmp_path, ca, server), _client_context(tmp_path, ca, client), server_hostname="tally.example"
    )
    assert right is None


def test_a_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    ca, other = create_ca(), create_ca("someone else's CA")
    server = issue_server(ca, "aggregate", ["localhost"])
    intruder = issue_client(other, "intruder", "writer")
    _, _, error = _handshake(_server_context(tmp_path, ca, server), _client_context(tmp_path, ca, intruder))
    assert error is not None  # the server refused the client's certificate


def test_a_revoked_client_is_refused_by_openssl_reading_the_crl(tmp_path: Path) -> None:
    pki = PkiDir(tmp_path / "pki")
    assert pki.init() is True
    assert pki.init() is False  # keeps its CA
    server = pki.issue_server("aggregate", ["localhost"])
    kept = pki.issue_client("publish", "reader")
    lost = pki.issue_client("relay", "writer")
    serial = pki.revoke("relay")
    assert serial == lost.certificate.serial_number
    ca = pki.authority()
    crl = pki.crl.read_bytes()
    assert Crl.revoked_serials(crl, ca.certificate) == {serial}
    _, _, refused = _handshake(_server_context(tmp_path, ca, server, crl), _client_context(tmp_path, ca, lost))
    _, _, accepted = _handshake(_server_context(tmp_path, ca, server, crl), _client_context(tmp_path, ca, kept))
    assert refused is not None and accepted is None


def test_a_crl_signed_by_another_ca_is_not_believed() -> None:
    ca, other = create_ca(), create_ca("forger")
    forged = Crl.revoke(other, Crl.empty(other), 12345)
    with pytest.raises(ValueError, match="not signed by this CA"):
        Crl.revoked_serials(forged, ca.certificate)


def test_revoking_twice_keeps_one_entry_and_files_have_the_right_modes(tmp_path: Path) -> None:
    pki = PkiDir(tmp_path / "pki")
    pki.init()
    pki.issue_client("admin", "admin")
    first = pki.revoke("admin")
    assert pki.revoke("admin") == first
    assert len(list(x509.load_pem_x509_crl(pki.crl.read_bytes()))) == 1
    assert pki.ca_key.stat().st_mode & 0o777 == 0o600
    assert pki.key("admin").stat().st_mode & 0o777 == 0o600
    assert pki.ca_cert.stat().st_mode & 0o777 == 0o644


@settings(max_examples=20, deadline=None)
@given(role=st.sampled_from(CLIENT_ROLES))
def test_the_role_read_back_is_the_role_issued(role: str) -> None:
    ca = _CA
    pair = issue_client(ca, "holder", role)
    assert role_of(pair.certificate) == role
    assert split_bundle(pair.bundle()) == pair
    assert split_bundle(pair.key_pem + pair.cert_pem) == pair


_CA = create_ca()


def test_bad_requests_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="role must be one of"):
        issue_client(_CA, "x", "superuser")
    with pytest.raises(PkiError, match="name"):
        issue_client(_CA, "../etc/passwd", "reader")
    with pytest.raises(PkiError, match="at least one host"):
        issue_server(_CA, "tally", [])
    with pytest.raises(PkiError, match="suara pki init"):
        PkiDir(tmp_path / "none").issue_client("x", "reader")
    assert role_of(issue_server(_CA, "tally", ["localhost"]).certificate) is None
    with pytest.raises(PkiError, match="exactly one"):
        split_bundle(_CA.cert_pem)
