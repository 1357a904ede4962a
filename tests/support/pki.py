"""The tests' PKI: one private CA per test process (in a temporary directory), a server certificate per
service for 127.0.0.1/localhost, and client certificates issued on demand. Every rig serves TLS with
it by default, so the whole suite runs over TLS; `insecure()` gives plaintext settings for the few
tests of SUARA_INSECURE.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from suara.runtime.auth.certificate import CertCredential
from suara.runtime.pki import PkiDir
from suara.runtime.secrets_file import write_secret
from suara.runtime.settings import Settings, TlsSettings
from suara.runtime.tls import ClientTls, ServerTls, open_channel
from tests.support.factories import TEST_ELECTION

SERVICES = ("tally", "aggregate", "publish")
HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class SuitePki:
    pki: PkiDir

    @classmethod
    def create(cls, path: Path) -> SuitePki:
        pki = PkiDir(path)
        pki.init()
        for name in SERVICES:
            pki.issue_server(name, HOSTS)
        return cls(pki)

    @property
    def ca(self) -> Path:
        return Path(self.pki.ca_cert)

    @property
    def crl(self) -> Path:
        return Path(self.pki.crl)

    def bundle(self, name: str, role: str, election: str = TEST_ELECTION) -> Path:
        """A client certificate and its key in one PEM file (what a credential setting points at), issued
        once, for the election the suite's registries name unless told otherwise."""
        path = Path(self.pki.path) / f"{name}.pem"
        if not path.exists():
            # Never over a service's server certificate: a name of its own.
            pair = self.pki.issue_client(f"client-{name}", role, election=election)
            write_secret(path, (pair.cert_pem + pair.key_pem).decode())
        return path

    def credential(self, name: str, role: str, election: str = TEST_ELECTION) -> CertCredential:
        return CertCredential.load(self.bundle(name, role, election))

    def server_tls(self, service: str) -> ServerTls:
        return ServerTls(self.pki.cert(service), self.pki.key(service), self.ca, self.crl)

    def client_tls(self, credential: CertCredential | None = None) -> ClientTls:
        return ClientTls(self.ca.read_bytes(), None if credential is None else credential.key_pair)

    def channel(self, address: str, credential: CertCredential | None = None, **kwargs: Any) -> grpc.aio.Channel:
        """A TLS channel to `address` trusting this CA, with `credential`'s certificate when given."""
        return open_channel(address, self.client_tls(credential), **kwargs)

    def settings(self, settings: Settings) -> Settings:
        """`settings` serving and calling over TLS with this PKI's certificates."""
        sections = {
            name: replace(getattr(settings, name), tls_cert=str(self.pki.cert(name)), tls_key=str(self.pki.key(name)))
            for name in SERVICES
        }
        tls = TlsSettings(ca_file=str(self.ca), crl_file=str(self.crl))
        return replace(settings, tls=tls, **sections)


@functools.cache
def suite_pki() -> SuitePki:
    """This process's PKI, made on first use and removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="suara-pki-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return SuitePki.create(path)


def with_tls(settings: Settings) -> Settings:
    return suite_pki().settings(settings)


def insecure(settings: Settings) -> Settings:
    """`settings` in plaintext (SUARA_INSECURE): the debugging mode, where tokens are the only proof."""
    return replace(settings, tls=TlsSettings(insecure=True))


def tls_env() -> dict[str, str]:
    """The environment of a `suara` child process serving and calling over this PKI's TLS."""
    pki = suite_pki().pki
    env = {"SUARA_CA_FILE": str(pki.ca_cert), "SUARA_CRL_FILE": str(pki.crl)}
    for name in SERVICES:
        env[f"SUARA_{name.upper()}_TLS_CERT"] = str(pki.cert(name))
        env[f"SUARA_{name.upper()}_TLS_KEY"] = str(pki.key(name))
    return env
