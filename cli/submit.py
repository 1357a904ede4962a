"""`suara submit FORM.json --key KEYFILE`: sign a C.Hasil form, keep it in the outbox, send it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli.outbox import add_outbox_argument, add_target_argument, entry_json, outbox_path, target_of, tls_of
from suara.client.outbox import Entry
from suara.runtime.settings import Settings

EXIT_REJECTED = 1
EXIT_LOCAL_ERROR = 2

_EXAMPLE = """\
FORM.json, the form as the KPPS officer signs it (ppwp: the presidential contest):
  {"tps": "1101012001001", "contest": "ppwp", "version": 1,
   "votes": {"100025": 40, "100026": 90, "100027": 70},
   "administrasi": {"suara_sah": 200, "suara_tidak_sah": 5, "suara_total": 205,
                    "pemilih_dpt_j": 250, "pemilih_dpt_l": 120, "pemilih_dpt_p": 130, ...}}
  To correct a form already submitted, submit the corrected one with a higher "version".

exit status: 0 the form is safe (stored by tally, or saved in the outbox to send later);
1 tally rejected it (the reason is printed); 2 the form, key or outbox could not be used."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="sign a C.Hasil form with a device key and send it to tally (kept in the outbox until sent)",
        description=(
            "Sign FORM.json with the device key, save it in the local outbox, then send it to tally.\n"
            "The form is on disk before anything goes on the network: if the network or tally is down\n"
            "it stays in the outbox and `suara outbox flush` sends it later. Submitting the same form\n"
            "again is safe: tally answers DUPLICATE with the original receipt. The photos' SHA-256\n"
            "are bound into the signed form, so a photo can never be swapped afterwards."
        ),
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("form", type=Path, metavar="FORM.json", help="the form, as JSON (see below)")
    p.add_argument(
        "--key", type=Path, required=True, metavar="KEYFILE", help="the device key file from `suara device enroll`"
    )
    p.add_argument(
        "--photo",
        type=Path,
        action="append",
        default=[],
        metavar="P",
        help="a JPEG or PNG photo of the form; up to 3, repeat the option",
    )
    add_target_argument(p)
    add_outbox_argument(p)
    p.add_argument("--timeout", type=float, default=20.0, metavar="S", help="how long to wait for tally (default: 20)")
    p.add_argument("--json", action="store_true", help="print the outbox entry as JSON instead of text")
    p.set_defaults(handler=run_submit)


def _fail(message: str) -> int:
    print(f"suara submit: {message}", file=sys.stderr)
    return EXIT_LOCAL_ERROR


async def run_submit(args: argparse.Namespace, settings: Settings) -> int:
    from suara.client.outbox import OutboxConflict, OutboxError
    from suara.client.sdk import Client, FormError
    from suara.election.form import FormDictError, form_from_dict
    from suara.election.signing import DeviceKey

    # Everything local is checked before the outbox is touched, each with what to do about it.
    try:
        data = json.loads(args.form.read_text())
    except OSError as exc:
        return _fail(f"cannot read {args.form}: {exc.strerror}")
    except ValueError as exc:
        return _fail(f"{args.form} is not valid JSON: {exc}")
    try:
        form = form_from_dict(data)
    except FormDictError as exc:
        lines = "\n".join(f"  {p.field}: {p.description}" for p in exc.problems)
        return _fail(f"{args.form} is not a valid form:\n{lines}")
    try:
        key = DeviceKey.load(args.key)
    except OSError as exc:
        return _fail(f"cannot read the key file {args.key}: {exc.strerror}")
    except (ValueError, KeyError) as exc:
        return _fail(f"{args.key} is not a device key file ({exc}); create one with `suara device enroll`")
    photos: list[bytes] = []
    for path in args.photo:
        try:
            photos.append(path.read_bytes())
        except OSError as exc:
            return _fail(f"cannot read the photo {path}: {exc.strerror}")

    target = target_of(args, settings)
    try:
        tls = tls_of(args, settings)
        async with await Client.open(
            outbox_path(args, settings), target, tls=tls, call_timeout_s=args.timeout
        ) as client:
            attempt = await client.submit(form, key, photos)
    except FormError as exc:
        return _fail(str(exc))
    except OutboxConflict as exc:
        return _fail(str(exc))
    except (OutboxError, OSError) as exc:
        return _fail(f"cannot use the outbox {outbox_path(args, settings)}: {exc}")

    entry = attempt.entry
    if args.json:
        print(json.dumps({**entry_json(entry), "answer": attempt.outcome}, indent=2))
    else:
        print(describe(entry, attempt.outcome, target))
    return EXIT_REJECTED if entry.state == "rejected" else 0


def describe(entry: Entry, answer: str | None, target: str) -> str:
    """What happened to a submitted form, in words an officer can act on."""
    what = entry.describe()
    if entry.state == "pending":
        return (
            f"{what}: saved in the outbox; will be sent when the network is back (suara outbox flush).\n"
            f"  tally at {target} did not answer: {entry.last_error}"
        )
    if entry.state == "rejected":
        return f"{what}: REJECTED by tally ({entry.last_code}): {entry.last_error}"
    lines = [f"{what}: {_OUTCOME_TEXT.get(entry.outcome or '', entry.outcome or '')}"]
    if answer is None:
        lines[0] += " (already sent earlier; this is the stored receipt)"
    elif answer == "DUPLICATE" and entry.outcome != "DUPLICATE":
        lines[0] += " (tally already had it: same receipt)"
    if entry.outcome == "QUARANTINED":
        lines.append(f"  failed checks: {', '.join(entry.failed_checks)}")
        lines.append(f"  to correct it, submit the corrected form with version {entry.version + 1}")
    if entry.receipt is not None:
        r = entry.receipt
        lines.append(f"  receipt: submission {r.submission_id}, chain position {r.chain_position}")
        lines.append(f"  chain hash {r.chain_hash}, payload sha256 {r.payload_sha256}, at {r.server_time}")
    return "\n".join(lines)


_OUTCOME_TEXT = {
    "ACCEPTED": "ACCEPTED: stored by tally; it is the current form of this TPS and contest",
    "QUARANTINED": "QUARANTINED: stored by tally, but it fails consistency checks and counts nothing until corrected",
    "DUPLICATE": "DUPLICATE: tally already had this exact form (an earlier attempt got through); same receipt",
    "SUPERSEDED": "SUPERSEDED: stored for audit only; tally already has a higher version of this form",
}
