"""`suara pki init | issue | revoke`: the deployment's private certificate authority."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.actor import operator
from suara.runtime.pki import CLIENT_ROLES, LEAF_DAYS, SERVER_DAYS, PkiDir, PkiError, common_name, role_of
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    pki = sub.add_parser(
        "pki",
        help="the private certificate authority every TLS hop trusts",
        description=(
            "Run a private CA for one deployment. Every suara port speaks TLS; services call each other\n"
            "with client certificates whose role (writer, reader, federation, admin) is in the certificate.\n"
            "The directory holds ca.crt (give it to every process and client), ca.key (keep it on the\n"
            "machine that issues; mode 0600), crl.pem (the revocation list every process watches) and\n"
            "issued/NAME.crt + NAME.key."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    psub = pki.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    def with_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, help="the PKI directory (default: SUARA_DATA_DIR/pki)")

    p = psub.add_parser(
        "init",
        help="create the CA and an empty revocation list (keeps an existing CA)",
        description=(
            "Create a private CA (ECDSA P-256) and an empty revocation list in DIR. Run once per deployment;\n"
            "run again, it keeps the CA it finds (re-creating it would orphan every certificate issued)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with_dir(p)
    p.add_argument("--name", default="suara private CA", help="the CA's common name")
    p.set_defaults(handler=run_init)

    p = psub.add_parser(
        "issue",
        help="issue a server certificate (--host) or a client certificate (--role)",
        description=(
            "Issue a certificate signed by the CA into DIR/issued/NAME.crt and NAME.key (0600).\n"
            "A server certificate names the hosts clients dial (--host, repeatable: DNS names or IPs).\n"
            "A client certificate names its role: writer (tally's relay, applying to aggregate), reader\n"
            "(publish, reading aggregate and tally), federation (a province aggregate feeding the national\n"
            "one), admin (operators: enrolling devices, reading submissions). It also names the election it\n"
            "is for (--election, the registry's id: `suara registry show`); services refuse another's.\n"
            "Reissuing under the same NAME replaces the files (rotation); revoke the old one if it leaked."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with_dir(p)
    p.add_argument("name", help="who holds it, e.g. tally-1, publish, relay, admin-budi")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--host", action="append", help="a host name or IP address the server is dialled by")
    kind.add_argument("--role", choices=CLIENT_ROLES, help="the client's role")
    p.add_argument(
        "--election",
        metavar="ID",
        help="with --role: the election the client serves, as the registry names it (`suara registry show`)",
    )
    p.add_argument(
        "--days",
        type=int,
        help=f"validity in days (default: {SERVER_DAYS} for a server, whose revocation clients cannot check, "
        f"so a short life bounds it; {LEAF_DAYS} for a client)",
    )
    p.add_argument("--bundle", type=Path, help="also write certificate and key to this one file (0600)")
    p.set_defaults(handler=run_issue)

    p = psub.add_parser(
        "revoke",
        help="revoke an issued certificate: every process refuses it within a second",
        description=(
            "Add the certificate issued under NAME to the CA's revocation list (DIR/crl.pem, replaced\n"
            "atomically). Running processes re-read the list when it changes and refuse the certificate's\n"
            "calls within a second. On several machines, copy crl.pem to each (the same path they watch)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with_dir(p)
    p.add_argument("name", help="the name it was issued under")
    p.set_defaults(handler=run_revoke)


def _dir(args: argparse.Namespace, settings: Settings) -> PkiDir:
    return PkiDir(args.dir or settings.data_dir / "pki", actor=operator())


def run_init(args: argparse.Namespace, settings: Settings) -> int:
    pki = _dir(args, settings)
    if pki.init(args.name):
        print(f"CA created in {pki.path}: give {pki.ca_cert} to every client; keep {pki.ca_key} here")
    else:
        print(f"{pki.path} already has a CA ({pki.ca_cert}); nothing changed")
    return 0


def run_issue(args: argparse.Namespace, settings: Settings) -> int:
    from suara.runtime.secrets_file import write_secret

    pki = _dir(args, settings)
    if args.days is None:
        args.days = LEAF_DAYS if args.role else SERVER_DAYS
    if args.days < 1:
        print("--days must be at least 1", file=sys.stderr)
        return 2
    if args.role and not args.election:
        print(
            "--election ID is needed with --role: the election this certificate is for, as `suara registry show` "
            "prints it (services refuse a certificate of another election)",
            file=sys.stderr,
        )
        return 2
    if args.host and args.election:
        print("--election names a client's election: use it with --role, not --host", file=sys.stderr)
        return 2
    try:
        if args.role:
            pair = pki.issue_client(args.name, args.role, args.days, args.election)
        else:
            pair = pki.issue_server(args.name, args.host, args.days)
    except PkiError as error:
        print(f"suara pki: {error}", file=sys.stderr)
        return 2
    cert = pair.certificate
    what = f"role {role_of(cert)}, election {args.election}" if args.role else "hosts " + ", ".join(args.host)
    print(
        f"issued {common_name(cert)} ({what}), serial {cert.serial_number:x}:",
        pki.cert(args.name),
        pki.key(args.name),
    )
    if args.bundle:
        write_secret(args.bundle, pair.bundle().decode())
        print(f"bundle written to {args.bundle}")
    return 0


def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    pki = _dir(args, settings)
    try:
        serial = pki.revoke(args.name)
    except PkiError as error:
        print(f"suara pki: {error}", file=sys.stderr)
        return 2
    print(f"revoked {args.name} (serial {serial:x}); {pki.crl} updated")
    return 0
