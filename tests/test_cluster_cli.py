"""`edgebench cluster run | simulate` end to end (real local cluster, real subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgebench.graph.dags import linear_model

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgebench", "cluster", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_cluster_run_deploys_loads_and_survives_a_kill(tmp_path):
    path = tmp_path / "lin.onnx"
    linear_model(16, seed=2, name="lin").save(path)
    r = cli("run", str(path), "--workers", "2", "--seconds", "2.5", "--kill-after", "0.8", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["errors"] == [] and out["answered"]["lin"] > 50
    kinds = [e["kind"] for e in out["events"]]
    assert "worker_killed" in kinds and "replica_lost" in kinds
    assert out["deployments"][0]["errors"] == 0


@pytest.mark.slow
def test_cluster_run_large_tensors_by_shared_memory_or_not(tmp_path):
    from .test_cluster import wide_model

    path = tmp_path / "wide.onnx"
    wide_model().save(path)
    for flags, how in [((), "shm"), (("--no-shm",), "tcp")]:
        r = cli("run", str(path), "--workers", "1", "--seconds", "1", *flags, "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout)
        assert out["errors"] == [] and out["deployments"][0]["transport"] == how, out["deployments"]


def test_cluster_simulate_prints_the_scale_table():
    r = cli("simulate", "--sizes", "10,30", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert [row["n_nodes"] for row in rows] == [10, 30] and all(row["lost"] == 0 for row in rows)


def test_cluster_bad_arguments_are_one_line_and_exit_2(tmp_path):
    r = cli("run", str(tmp_path / "missing.onnx"), "--seconds", "1")
    assert r.returncode == 2 and "no such model file" in r.stderr and "Traceback" not in r.stderr
    r = cli("simulate", "--sizes", "ten")
    assert r.returncode == 2 and "--sizes" in r.stderr
