"""Photos of a C.Hasil form, drawn from the form's numbers: what the demo and the load test send.

A KPPS officer photographs the three pages of the signed paper form; the site shows them so anyone
can hold a TPS's numbers against its paper. These stand-ins are real JPEGs of that shape: a phone's
photo of an A4 page (1240×1754, paper grain, a warm tint), the numbers written in ink in their boxes.
They are reproducible: the same form always gives the same bytes, so a resend carries the same
photos and their SHA-256 in the signed form does not change.

Cost, measured on one core: about 45 ms and 350 KB per page (0.13 s and 1 MB per form of three
pages). The paper (the grain, what costs most) is drawn once per process, in about 0.4 s, and
reused; each page then costs its text and the JPEG encoding.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Mapping, Sequence

from PIL import Image, ImageChops, ImageDraw, ImageFont

from suara.election.form import administrasi_of
from suara.v1 import form_pb2

WIDTH, HEIGHT = 1240, 1754  # A4 at 150 dpi: what a phone's photo of the page comes down to
PAGES = 3
_MIN_ROW = 34  # px: a row of page 2 still legible in a phone's photo
QUALITY = 80
_INK = (28, 48, 140)  # a ballpoint's blue
_PRINT = (30, 30, 30)
_VOTERS = (
    ("pemilih_dpt", "Jumlah pemilih dalam DPT"),
    ("pengguna_dpt", "Pengguna hak pilih dalam DPT"),
    ("pengguna_dptb", "Pengguna hak pilih dalam DPTb"),
    ("pengguna_non_dpt", "Pengguna hak pilih dalam DPK"),
    ("pengguna_total", "Jumlah pengguna hak pilih"),
)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@functools.cache
def _paper() -> Image.Image:
    """The blank page: grain (what makes a photo weigh hundreds of KB), a warm tint, and the light
    falling off towards the bottom."""
    grain = Image.effect_noise((WIDTH, HEIGHT), 40).point(lambda v: 204 + v // 7)
    falloff = Image.linear_gradient("L").resize((WIDTH, HEIGHT)).point(lambda v: v // 8)
    lit = ImageChops.subtract(grain, falloff)
    return Image.merge("RGB", (lit, lit.point(lambda v: v - 5), lit.point(lambda v: v - 18)))


def form_photos(form: form_pb2.CHasilForm, names: Mapping[str, str], pages: int = PAGES) -> list[bytes]:
    """The JPEGs of the form's first `pages` pages (at most 3): voters, votes, signatures.

    `names`: choice id → the name printed on the form, in ballot order (a choice the form has no
    votes for is written 0; one missing from `names` is printed after them, by its id)."""
    if not 0 <= pages <= PAGES:
        raise ValueError(f"a C.Hasil form has {PAGES} pages, asked for {pages}")
    order = [*names, *sorted(set(form.votes) - set(names))]
    votes = [(names.get(c, c), form.votes.get(c, 0)) for c in order]
    adm = administrasi_of(form)
    return [_page(form.tps, form.contest, form.version, votes, adm, n) for n in range(1, pages + 1)]


def _page(
    tps: str, contest: str, version: int, votes: Sequence[tuple[str, int]], adm: Mapping[str, int], n: int
) -> bytes:
    rng = random.Random(f"{tps}:{contest}:{version}:{n}")
    image = _paper().copy()
    draw = ImageDraw.Draw(image)
    small, body, title, hand = _font(22), _font(26), _font(34), _font(38)

    def ink(xy: tuple[float, float], text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont = hand) -> None:
        x, y = xy
        draw.text((x + rng.uniform(-4, 4), y + rng.uniform(-3, 3)), text, fill=_INK, font=font)

    draw.text((80, 70), f"MODEL C.HASIL-{contest.upper()}", fill=_PRINT, font=title)
    draw.text((80, 115), "CATATAN HASIL PENGHITUNGAN PEROLEHAN SUARA", fill=_PRINT, font=body)
    draw.text((WIDTH - 260, 70), f"Halaman {n} dari {PAGES}", fill=_PRINT, font=small)
    for i, (label, value) in enumerate(
        (("Provinsi", tps[:2]), ("Kabupaten/Kota", tps[:4]), ("Kecamatan", tps[:6]), ("Kelurahan/Desa", tps[:10]))
    ):
        draw.text((80, 175 + 34 * i), f"{label}", fill=_PRINT, font=small)
        draw.text((330, 175 + 34 * i), f": {value}", fill=_PRINT, font=small)
    draw.text((80, 175 + 34 * 4), "TPS", fill=_PRINT, font=small)
    ink((345, 165 + 34 * 4), tps[-3:])
    draw.line((80, 360, WIDTH - 80, 360), fill=_PRINT, width=3)

    if n == 1:
        draw.text((80, 390), "I. DATA PEMILIH DAN PENGGUNAAN HAK PILIH", fill=_PRINT, font=body)
        cols = (700, 860, 1020)
        for x, head in zip(cols, ("L", "P", "JML"), strict=True):
            draw.text((x + 30, 450), head, fill=_PRINT, font=body)
        for i, (key, label) in enumerate(_VOTERS):
            y = 510 + 110 * i
            draw.text((80, y + 20), f"{i + 1}. {label}", fill=_PRINT, font=body)
            for x, part in zip(cols, ("_l", "_p", "_j"), strict=True):
                draw.rectangle((x, y, x + 140, y + 80), outline=_PRINT, width=2)
                ink((x + 18, y + 18), str(adm.get(key + part, "")))
    elif n == 2:
        draw.text((80, 390), "II. DATA PEROLEHAN SUARA", fill=_PRINT, font=body)
        rows = len(votes) + 3
        # A ballot of many choices (DPR's parties and candidates) runs in columns, as the paper does.
        per_column = min(rows, (HEIGHT - 600) // _MIN_ROW)
        columns = -(-rows // per_column)
        step = min(110, (HEIGHT - 600) // per_column)
        width = (WIDTH - 160) // columns
        box = min(220, width // 3)
        chars = 52 if columns == 1 else max(6, (width - box - 20) // 14)
        pen = hand if step >= 60 else _font(max(16, step - 10))
        lines = [(f"{i + 1:02d}  {label}"[:chars], str(v)) for i, (label, v) in enumerate(votes)]
        lines += [
            ("Jumlah suara sah"[:chars], str(adm.get("suara_sah", ""))),
            ("Jumlah suara tidak sah"[:chars], str(adm.get("suara_tidak_sah", ""))),
            ("Jumlah seluruh suara"[:chars], str(adm.get("suara_total", ""))),
        ]
        for i, (label, value) in enumerate(lines):
            column, row = divmod(i, per_column)
            x, y = 80 + width * column, 460 + step * row
            draw.text((x, y + step // 4), label, fill=_PRINT, font=small if step < 80 else body)
            right = x + width - 20 if columns > 1 else 1160
            draw.rectangle((right - box, y, right, y + max(step - 14, step * 3 // 4)), outline=_PRINT, width=2)
            ink((right - box + 10, y + max(0, step // 2 - 30) if step >= 60 else y + 2), value, pen)
    else:
        draw.text((80, 390), "III. KPPS DAN SAKSI YANG HADIR", fill=_PRINT, font=body)
        for i, role in enumerate(("Ketua KPPS", "Anggota KPPS", "Anggota KPPS", "Saksi", "Saksi", "Saksi")):
            y = 470 + 170 * i
            draw.text((80, y + 30), f"{i + 1}. {role}", fill=_PRINT, font=body)
            draw.line((640, y + 110, 1160, y + 110), fill=_PRINT, width=1)
            # A signature: a few strokes of ink, different for every TPS and line.
            x, yy = 680 + rng.randint(0, 120), y + 80
            points = [(x + 30 * k + rng.randint(-10, 10), yy + rng.randint(-40, 20)) for k in range(10)]
            draw.line(points, fill=_INK, width=4, joint="curve")
    draw.text((80, HEIGHT - 90), f"{tps} · versi {version}", fill=_PRINT, font=small)

    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, optimize=False)
    return out.getvalue()
