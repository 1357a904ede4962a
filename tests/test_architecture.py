"""The tree is the architecture: who may import whom, and who may read which schema.

The arrows run one way — composition root (cli) → services → library (suara) → generated stubs
(suara.v1) — and the tools (loadtest, bench) drive suara from outside. Read from the source text
(every `import`, at any depth, including those inside functions), so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("tally", "aggregate", "publish")
SCHEMAS = (*SERVICES, "registry")


def python_files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def top(module: str) -> str:
    return module.split(".")[0]


def arrows(package: str) -> list[tuple[str, str]]:
    """(file, module) for every import of a suara-tree package from files under `package`."""
    ours = {"suara", "services", "cli", "loadtest", "bench", "tests"}
    return [
        (str(path.relative_to(ROOT)), module)
        for path in python_files(package)
        for module in imported_modules(path)
        if top(module) in ours
    ]


def test_the_library_imports_no_service_tool_or_composition_root() -> None:
    wrong = [(f, m) for f, m in arrows("suara") if top(m) != "suara"]
    assert wrong == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_itself_and_the_library(service: str) -> None:
    own = f"services.{service}"
    wrong = [(f, m) for f, m in arrows(f"services/{service}") if top(m) != "suara" and not m.startswith(own)]
    assert wrong == []


@pytest.mark.parametrize("tool", ["loadtest"])
def test_tools_drive_suara_from_outside(tool: str) -> None:
    # Through the client SDK, the stubs and the pure domain; never a service's internals or the CLI.
    wrong = [(f, m) for f, m in arrows(tool) if top(m) not in ("suara", tool)]
    assert wrong == []


def test_the_arrow_checks_see_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f() -> None:\n    from services.tally.relay import Relay\n")
    assert list(imported_modules(source)) == ["services.tally.relay"]


_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+(" + "|".join(SCHEMAS) + r")\.[a-z_]+", re.IGNORECASE)


def tables_named(path: Path) -> set[str]:
    """Schemas whose tables a file names in SQL: .sql text, or the string literals of a .py file."""
    if path.suffix == ".sql":
        texts = [path.read_text()]
    else:
        tree = ast.parse(path.read_text(), str(path))
        texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return {m.group(1).lower() for text in texts for m in _TABLE.finditer(text)}


def test_the_cli_reads_no_component_tables() -> None:
    # It asks a component through its API or its own module (whose SQL lives in its sql/ folder).
    named = {str(p.relative_to(ROOT)): tables_named(p) for p in python_files("cli")}
    assert {f: s for f, s in named.items() if s} == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_names_no_other_service_tables(service: str) -> None:
    # The registry is reference data every service reads; another service's schema is reached over gRPC.
    files = [*(ROOT / "services" / service).rglob("*.sql"), *python_files(f"services/{service}")]
    others = set(SERVICES) - {service}
    named = {str(p.relative_to(ROOT)): tables_named(p) & others for p in files}
    assert {f: s for f, s in named.items() if s} == {}


def test_the_table_check_finds_a_query_in_a_string(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('Q = "SELECT count(*) FROM tally.outbox WHERE delivered_at IS NULL"\n')
    assert tables_named(source) == {"tally"}
