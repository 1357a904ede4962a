"""The Patroni configuration cli/patroni.py writes, checked by Patroni's own validator (no cluster started)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.patroni import PatroniCluster, patroni_installed


@pytest.mark.skipif(not patroni_installed(), reason="patroni is not installed (the dev extras: make install)")
def test_every_node_config_passes_patroni_validation_and_promotes_only_synchronous_standbys(tmp_path: Path) -> None:
    cluster = PatroniCluster(tmp_path / "cluster")
    assert len({h.address for h in cluster.hosts}) == 3
    ports = [(h.address, p) for h in cluster.hosts for p in (h.etcd_client, h.etcd_peer, h.api_port, h.pg_port)]
    assert len(set(ports)) == len(ports)
    for host in cluster.hosts:
        host.root.mkdir(parents=True)
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
        assert all("trust" not in line and "md5" not in line for line in config["postgresql"]["pg_hba"])
    url = cluster.url(role="suara_tally")
    hosts = ",".join(f"{h.address}:{h.pg_port}" for h in cluster.hosts)
    assert url.startswith(f"postgresql://suara_tally@{hosts}/postgres?target_session_attrs=read-write&passfile=")
    assert "suara_tally" in Path(url.rsplit("passfile=", 1)[1]).name
