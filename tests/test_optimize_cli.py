"""`edgebench optimize`: a real small search from the command line, its table, OUTDIR
(best model, JSON report, engine settings), --json, .npz data, and bad input in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgebench as eb
from edgebench import cli
from edgebench.errors import DatasetError
from edgebench.optimize.cli import OUTPUT_FILES, add_optimize_command, load_npz

from ._models import mlp_proto, two_input_proto

if "optimize" not in cli.COMMANDS:  # until edgebench/cli.py registers it itself
    cli.COMMANDS.register("optimize", add_optimize_command)

FAST = ["--threads", "1", "--latency-s", "0.15"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("optcli")
    model = eb.load(mlp_proto(n_in=16, n_hidden=64, n_out=4), name="clinet")
    path = model.save(d / "clinet.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 16)).astype(np.float32)
    np.savez(d / "data.npz", x=x)
    np.savez(d / "named.npz", x=x[:50], cal_x=x[50:])
    np.savez(d / "wrong.npz", z=x)
    (d / "notnpz.npz").write_text("hello")
    loaded = eb.load(str(path))
    return {"model": str(path), "dir": d, "x": x, "sha": loaded.sha256, "name": loaded.name}


def test_search_prints_the_table_and_writes_outdir(files, cache, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["optimize", files["model"], "--data", str(files["dir"] / "data.npz"), "--policy", "exhaustive",
                   "--max-trials", "3", "-o", str(out), *FAST])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = cap.out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("#  candidate"))
    for col in ("candidate", "p50 ms", "vs fp32", "MB", "status", "reason"):
        assert col in lines[head]
    rows = lines[head + 2:head + 5]
    assert rows[0].lstrip().startswith("0") and "fp32 baseline" in rows[0] and "1.00x" in rows[0]
    assert [r.split()[0].rstrip("*") for r in rows] == ["0", "1", "2"]
    assert sum(r.split()[0].endswith("*") for r in rows) == 1  # the winner is marked
    assert "3 trials (exhaustive policy)" in cap.out and "best    " in cap.out
    assert "trial" in cap.err  # the progress bar (stderr)
    # OUTDIR: the best model, the report, the engine settings, and they agree
    report = json.loads((out / OUTPUT_FILES["report"]).read_text())
    engine = json.loads((out / OUTPUT_FILES["engine"]).read_text())
    assert report["model"] == files["name"] and report["model_sha256"] == files["sha"]
    assert len(report["trials"]) == 3 and report["trials"][0]["key"] == "[]"
    assert report["budgets"]["max_accuracy_drop"] == 0.01 and report["policy"] == "exhaustive"
    best = eb.load(str(out / OUTPUT_FILES["model"]))
    if report["confirmed_ratio"] is None:  # the baseline kept: the very input
        assert best.sha256 == files["sha"] and report["reason"].startswith("fp32 baseline kept")
    else:
        assert report["confirmed_ratio"] < 1.0 and best.sha256 != files["sha"]
    assert engine["model"] == "model.onnx" and engine["threads"] == 1
    assert engine["options"] == report["engine_settings"]["options"]
    with eb.Engine(str(out / engine["model"]), threads=engine["threads"], options=engine["options"]) as eng:
        y = eng.run(files["x"][:4])["y"]
    assert y.shape == (4, 4) and np.isfinite(y).all()


def test_json_output_has_the_trials_and_no_progress_bar(files, cache, capsys):
    rc = cli.main(["optimize", files["model"], "--data", str(files["dir"] / "named.npz"), "--max-trials", "2",
                   "--policy", "exhaustive", "--json", "--no-store", *FAST])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads(cap.out)
    assert len(d["trials"]) == 2 and d["trials"][0]["status"] == "ok"
    assert "50 unlabelled evaluation samples, 30 calibration samples" in d["data"]
    assert "trial/s" not in cap.err and "%|" not in cap.err
    assert not (cache / "optimize").exists() or not any((cache / "optimize").rglob("*.jsonl"))


@pytest.mark.parametrize("args, says", [
    (["nope.onnx"], "no such model file"),
    (["{model}", "--data", "zoo:nope"], "unknown zoo dataset 'nope'"),
    (["{model}", "--data", "data.csv"], "is not understood"),
    (["{model}", "--data", "{dir}/missing.npz"], "no such data file"),
    (["{model}", "--data", "{dir}/wrong.npz"], "no inputs for model"),
    (["{model}", "--data", "{dir}/notnpz.npz"], "as a .npz archive"),
    (["{model}", "--policy", "genetic"], "invalid choice: 'genetic'"),
    (["{model}", "--max-accuracy-drop", "2"], "must be a fraction"),
    (["{model}", "--max-trials", "0"], "must be a positive integer"),
    (["{model}", "--latency-budget-ms", "-1"], "must be a positive number"),
    (["{model}", "-o", "{model}"], "exists and is not a folder"),
])
def test_bad_input_is_one_line_and_exit_2(files, cache, capsys, args, says):
    argv = ["optimize"] + [a.format(model=files["model"], dir=files["dir"]) for a in args] + ["--no-store"]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgebench: error:") and says in lines[0], err


def test_data_that_does_not_fit_the_model_is_one_line(files, cache, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", x=np.zeros((20, 3), np.float32))
    rc = cli.main(["optimize", files["model"], "--data", str(tmp_path / "bad.npz"), "--no-store", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"does not fit model {files['name']!r}" in err


def test_load_npz_forms(files, tmp_path):
    model = eb.load(mlp_proto(n_in=16, n_hidden=8, n_out=4))  # its input is named "x"
    x = files["x"]
    np.savez(tmp_path / "lab.npz", X=x, y=np.arange(len(x)) % 4)  # "X": the single-input form
    (X, y), cal = load_npz(tmp_path / "lab.npz", model)
    assert X.shape == (80, 16) and y.shape == (80,) and cal is None
    X, cal = load_npz(files["dir"] / "named.npz", model)  # "x" and "cal_x": by input name
    assert X["x"].shape == (50, 16) and cal["x"].shape == (30, 16)
    two = eb.load(two_input_proto())
    np.savez(tmp_path / "two.npz", a=np.zeros((6, 3), np.float32), b=np.zeros((6, 3), np.int64),
             cal_a=np.ones((2, 3), np.float32), cal_b=np.ones((2, 3), np.int64), labels=np.zeros(6))
    (X, y), cal = load_npz(tmp_path / "two.npz", two)
    assert set(X) == {"a", "b"} and set(cal) == {"a", "b"} and len(y) == 6
    with pytest.raises(DatasetError, match="no inputs for model"):
        load_npz(files["dir"] / "wrong.npz", two)


@pytest.mark.torch
def test_digits_with_labels_shows_accuracy(zoo_cache, cache, tmp_path, capsys):
    rc = cli.main(["optimize", "zoo:digits", "--data", "zoo:digits", "--max-trials", "2", "--no-store",
                   "-o", str(tmp_path / "d"), *FAST])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "accuracy measured against the labels" in cap.out
    head = next(ln for ln in cap.out.splitlines() if ln.lstrip().startswith("#  candidate"))
    assert "accuracy" in head
    base = next(ln for ln in cap.out.splitlines() if "fp32 baseline" in ln and "1.00x" in ln)
    acc = float(base.split("%")[0].split()[-1])
    assert acc > 95.0
    assert (tmp_path / "d" / "model.onnx").is_file()
