"""`suara pki init | issue | revoke`: the files an operator hands out, and refusals that say what to do."""

from __future__ import annotations

import datetime
import getpass
import json
import socket
from pathlib import Path

from cryptography import x509

from suara.runtime.pki import Crl, election_of, role_of, split_bundle
from tests.support.processes import run_suara, suara_env


async def test_init_issue_revoke_round_trip(tmp_path: Path) -> None:
    env = suara_env(SUARA_DATA_DIR=tmp_path / "state")
    pki = tmp_path / "state" / "pki"  # the default directory
    first = await run_suara("pki", "init", env=env, cwd=tmp_path)
    assert first.returncode == 0 and "CA created" in first.stdout, first.stderr
    again = await run_suara("pki", "init", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())

    bundle = tmp_path / "admin.pem"
    issued = await run_suara(
        "pki", "issue", "admin-budi", "--role", "admin", "--election", "pemilu-2029", "--bundle", str(bundle),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    pair = split_bundle(bundle.read_bytes())
    assert role_of(pair.certificate) == "admin"
    assert election_of(pair.certificate) == "pemilu-2029"
    assert pair.certificate.issuer == ca.subject
    assert bundle.stat().st_mode & 0o777 == 0o600

    server = await run_suara(
        "pki", "issue", "tally-1", "--host", "127.0.0.1", "--host", "tally.local", env=env, cwd=tmp_path
    )
    assert server.returncode == 0, server.stderr
    cert = x509.load_pem_x509_certificate((pki / "issued" / "tally-1.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["tally.local"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    revoked = await run_suara("pki", "revoke", "admin-budi", env=env, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert Crl.revoked_serials((pki / "crl.pem").read_bytes(), ca) == {pair.certificate.serial_number}


async def test_refusals_name_what_to_do(tmp_path: Path) -> None:
    env = suara_env(SUARA_DATA_DIR=tmp_path / "state")
    no_ca = await run_suara("pki", "issue", "relay", "--role", "writer", "--election", "e1", env=env, cwd=tmp_path)
    assert no_ca.returncode == 2 and "suara pki init" in no_ca.stderr
    await run_suara("pki", "init", env=env, cwd=tmp_path)
    unknown = await run_suara("pki", "revoke", "nobody", env=env, cwd=tmp_path)
    assert unknown.returncode == 2 and "no certificate named 'nobody'" in unknown.stderr
    bad_role = await run_suara("pki", "issue", "relay", "--role", "root", env=env, cwd=tmp_path)
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    bad_name = await run_suara(
        "pki", "issue", "Relay One", "--role", "writer", "--election", "e1", env=env, cwd=tmp_path
    )
    assert bad_name.returncode == 2 and "lower-case" in bad_name.stderr
    no_election = await run_suara("pki", "issue", "relay", "--role", "writer", env=env, cwd=tmp_path)
    assert no_election.returncode == 2 and "suara registry show" in no_election.stderr
    bad_election = await run_suara(
        "pki", "issue", "relay", "--role", "writer", "--election", "Pemilu 2029", env=env, cwd=tmp_path
    )
    assert bad_election.returncode == 2 and "suara registry show" in bad_election.stderr


async def test_every_issue_and_revoke_is_appended_to_the_log_with_who_and_when(tmp_path: Path) -> None:
    env = suara_env(SUARA_DATA_DIR=tmp_path / "state")
    pki = tmp_path / "state" / "pki"
    log = pki / "log.jsonl"
    actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"  # the operator the DB admin logs name too
    started = datetime.datetime.now(datetime.UTC)
    steps = [
        ("pki", "init"),
        ("pki", "issue", "admin-budi", "--role", "admin", "--election", "pemilu-2029"),
        ("pki", "issue", "tally-1", "--host", "127.0.0.1", "--host", "tally.local"),
        ("pki", "revoke", "admin-budi"),
        ("pki", "init"),  # keeps the CA: nothing done, nothing recorded
    ]
    before = b""
    for step in steps:
        done = await run_suara(*step, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        now = log.read_bytes()
        assert now.startswith(before), f"{step}: earlier lines changed"  # only ever appended
        before = now
    assert log.stat().st_mode & 0o777 == 0o644

    def serial(path: Path) -> str:
        return f"{x509.load_pem_x509_certificate(path.read_bytes()).serial_number:x}"

    admin = serial(pki / "issued" / "admin-budi.crt")
    lines = [json.loads(line) for line in before.decode().splitlines()]
    assert [{k: v for k, v in line.items() if k != "at"} for line in lines] == [
        {"actor": actor, "action": "init", "name": "suara private CA", "serial": serial(pki / "ca.crt")},
        {
            "actor": actor,
            "action": "issue",
            "name": "admin-budi",
            "role": "admin",
            "election": "pemilu-2029",
            "serial": admin,
        },
        {
            "actor": actor,
            "action": "issue",
            "name": "tally-1",
            "hosts": ["127.0.0.1", "tally.local"],  # in the order asked for
            "serial": serial(pki / "issued" / "tally-1.crt"),
        },
        {
            "actor": actor,
            "action": "revoke",
            "name": "admin-budi",
            "role": "admin",
            "election": "pemilu-2029",
            "serial": admin,
        },
    ]
    times = [datetime.datetime.fromisoformat(line["at"]) for line in lines]
    assert all(t.utcoffset() == datetime.timedelta(0) for t in times)  # UTC, said so
    assert started <= times[0] <= times[1] <= times[2] <= times[3] <= datetime.datetime.now(datetime.UTC)


def test_suara_up_keeps_its_ca_and_reissues_clients_of_another_election(tmp_path: Path) -> None:
    """After `suara registry load --election-id`, `suara up` hands its children certificates of the new
    election (the old ones would be refused), under the same CA its clients already trust."""
    from cli.up import local_pki

    bundles = [tmp_path / f"{n}.pem" for n in ("admin", "relay", "publish")]
    hosts = ["127.0.0.1", "localhost"]
    _, ca = local_pki(tmp_path, hosts, "gladi-2029-01", *bundles)
    first_ca = ca.read_bytes()
    assert [election_of(split_bundle(b.read_bytes()).certificate) for b in bundles] == ["gladi-2029-01"] * 3
    kept = [b.read_bytes() for b in bundles]
    local_pki(tmp_path, hosts, "gladi-2029-01", *bundles)
    assert [b.read_bytes() for b in bundles] == kept  # same election: nothing reissued
    local_pki(tmp_path, hosts, "pemilu-2029", *bundles)
    assert [election_of(split_bundle(b.read_bytes()).certificate) for b in bundles] == ["pemilu-2029"] * 3
    assert [role_of(split_bundle(b.read_bytes()).certificate) for b in bundles] == ["admin", "writer", "reader"]
    assert ca.read_bytes() == first_ca


def test_suara_up_renews_certificates_that_expire_within_ten_days(tmp_path: Path) -> None:
    from cli.up import local_pki
    from suara.runtime.pki import RENEW_BEFORE, SERVER_DAYS, PkiDir

    hosts = ["127.0.0.1", "localhost"]
    bundles = [tmp_path / f"{n}.pem" for n in ("admin", "relay", "publish")]
    pki = PkiDir(tmp_path / "pki")
    pki.init()
    pki.issue_server("tally", hosts, days=RENEW_BEFORE.days - 1)  # about to expire
    pki.issue_server("aggregate", hosts)  # fresh: kept
    soon = pki.issue_client("soon", "writer", days=3, election="e1")
    bundles[1].write_bytes(soon.bundle())
    aggregate_before = pki.cert("aggregate").read_bytes()
    local_pki(tmp_path, hosts, "e1", *bundles)

    def expires(pem: bytes) -> datetime.timedelta:
        cert = x509.load_pem_x509_certificate(pem)
        return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)

    assert expires(pki.cert("tally").read_bytes()) > datetime.timedelta(days=SERVER_DAYS - 1)
    assert pki.cert("aggregate").read_bytes() == aggregate_before
    relay = split_bundle(bundles[1].read_bytes())
    assert relay.certificate.serial_number != soon.certificate.serial_number
    assert expires(relay.cert_pem) > RENEW_BEFORE
    assert role_of(relay.certificate) == "writer" and election_of(relay.certificate) == "e1"
