"""`suara device enroll|revoke`: give a TPS device its signing key; take it back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.actor import operator
from cli.embedded import database_url
from cli.keyfiles import write_key_file
from suara.election.codes import TPS_LENGTH
from suara.runtime.database import connect
from suara.runtime.settings import Settings


def add_parser(sub: Any) -> None:
    device = sub.add_parser("device", help="TPS device keys")
    dsub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    p = dsub.add_parser(
        "enroll",
        help="create an Ed25519 key for a TPS device and register its public key",
        description=(
            "Create an Ed25519 key pair for a TPS device, register the public key with tally (bound to\n"
            "that TPS) and write the private key to a file the device keeps (mode 0600, never overwritten)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tps", required=True, help=f"the {TPS_LENGTH}-digit TPS code the device serves")
    p.add_argument("--out", type=Path, help="key file to write (default: ./TPS-DEVICEID.key.json)")
    p.add_argument("--label", default="", help="a note, e.g. the officer or the phone")
    p.set_defaults(handler=run_enroll)

    r = dsub.add_parser(
        "revoke",
        help="revoke a device's key: every running tally refuses its forms within a second",
        description=(
            "Revoke a TPS device's key (a lost or stolen phone, an officer replaced). Every running tally refuses\n"
            "its forms within a second, PERMISSION_DENIED naming the device, and each such form raises an alarm\n"
            "(a `revoked_device` error in tally's log, a row in tally.alarm). Recorded in tally.admin_log with\n"
            "who and when. Forms it sent before stay as they were. To replace the phone, enroll a new key for\n"
            "the same TPS (`suara device enroll --tps TPS`): it continues from the TPS's current version."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", type=Path, metavar="KEYFILE", help="the device's key file")
    which.add_argument("--device-id", help="the device id (as `suara device enroll` printed it)")
    r.add_argument("--reason", default="", help="why, for the record (e.g. 'phone lost')")
    r.set_defaults(handler=run_revoke)


async def run_enroll(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.credentials import MAX_DEVICES_PER_TPS, TooManyDevices, enroll_device
    from suara.election.signing import DeviceKey
    from suara.registry.catalog import fetch_election_id, tps_exists

    if args.out is not None and args.out.exists():
        print(f"{args.out} exists; a device key is never overwritten. Choose another --out.", file=sys.stderr)
        return 2
    written: Path | None = None
    try:
        with database_url(settings) as url:
            async with connect(url) as conn:
                if await tps_exists(conn, args.tps) is None:
                    print(
                        f"unknown TPS {args.tps!r}: it is not in the registry (see `suara registry show`)",
                        file=sys.stderr,
                    )
                    return 2
                # The key file names the election: the device signs it into every form.
                key = DeviceKey.generate(args.tps, await fetch_election_id(conn))
                out: Path = args.out or Path(f"{args.tps}-{key.device_id}.key.json")
                if out.exists():  # noqa: ASYNC240  (one stat before any I/O of consequence)
                    print(f"{out} exists; a device key is never overwritten. Choose another --out.", file=sys.stderr)
                    return 2
                if not write_key_file(key, out):
                    return 2
                written = out
                try:
                    await enroll_device(conn, key.device_id, args.tps, key.public_key, args.label, actor=operator())
                except TooManyDevices:
                    out.unlink()  # noqa: ASYNC240  (undo the key file just written)
                    print(
                        f"TPS {args.tps} already has {MAX_DEVICES_PER_TPS} live device keys, the most it may have: "
                        "revoke a lost device's key before enrolling its replacement",
                        file=sys.stderr,
                    )
                    return 2
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    print(
        f"device {key.device_id} enrolled for TPS {args.tps} (election {key.election_id}); private key written to {out}"
    )
    return 0


async def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from services.tally.credentials import NotEnrolled, revoke_device
    from suara.election.signing import DeviceKey

    device_id: str = args.device_id
    if args.key is not None:
        try:
            device_id = DeviceKey.load(args.key).device_id
        except (OSError, ValueError, KeyError) as exc:
            print(f"cannot read the device key file {args.key}: {exc}", file=sys.stderr)
            return 2
    with database_url(settings) as url:
        async with connect(url) as conn:
            try:
                tps = await revoke_device(conn, device_id, operator(), args.reason)
            except NotEnrolled as exc:
                print(f"{exc}; nothing revoked", file=sys.stderr)
                return 1
    print(
        f"device {device_id} (TPS {tps}) revoked; running tally processes refuse it within a second. "
        f"To replace the phone: suara device enroll --tps {tps}"
    )
    return 0
