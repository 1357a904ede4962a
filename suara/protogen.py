"""Regenerate suara/v1 and docs/api.md from protos/ (`make protos`), or check that they agree (`--check`).

The stubs live inside the `suara` package so `from suara.v1 import tally_pb2`
works with no sys.path tricks: protoc runs with `-I protos` and the protos sit
under `protos/suara/v1/`, so the generated imports are already package-absolute.
The same protoc run writes a FileDescriptorSet with the comments, from which
suara.protodoc renders the API reference.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "suara" / "v1"
DOCS = ROOT / "docs" / "api.md"
DESCRIPTORS = "suara-v1.binpb"  # in the generation's temporary directory
TITLE = "suara.v1 API reference"
INTRO = (
    "Generated from the comments in `protos/suara/v1/*.proto` by `make protos` (`python -m suara.protogen`): "
    "edit the protos, not this file. To write a client, read the [client guide](client-guide.md) first."
)
INIT = '"""Generated gRPC/protobuf code for the suara.v1 API. Regenerate with `make protos`."""\n'


def generate(dest: Path) -> None:
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    bindir = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside this interpreter
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "suara" / "v1").glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={dest}",
        f"--grpc_python_out={dest}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={dest}",
        f"--mypy_grpc_out={dest}",
        f"--descriptor_set_out={dest / DESCRIPTORS}",
        "--include_source_info",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out = dest / "suara" / "v1"
    (out / "__init__.py").write_text(INIT)
    (out / "py.typed").write_text("")


def api_reference(dest: Path) -> str:
    """docs/api.md as the protos generated into `dest` by `generate` describe the API."""
    from google.protobuf import descriptor_pb2

    from suara.protodoc import render

    files = descriptor_pb2.FileDescriptorSet.FromString((dest / DESCRIPTORS).read_bytes())
    return render(files, TITLE, INTRO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--check", action="store_true", help="fail if suara/v1 or docs/api.md differs from what protos/ generates"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "suara" / "v1"
        reference = api_reference(Path(tmp))
        if args.check:
            cmp = filecmp.dircmp(fresh, OUT, ignore=["__pycache__"])
            stale = sorted(cmp.left_only + cmp.right_only + cmp.diff_files)
            if not DOCS.exists() or DOCS.read_text() != reference:
                stale.append(str(DOCS.relative_to(ROOT)))
            if stale:
                print(f"out of date with protos/ ({', '.join(stale)}): run `make protos`")
                return 1
            print("suara/v1 and docs/api.md match protos/")
            return 0
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(fresh, OUT)
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(reference)
    print(f"generated {OUT.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
