"""edgebench.zoo: built-in models (built in code, cached) and the digits data set."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import edgebench as eb
from edgebench.errors import ConfigError, ModelLoadError, UnknownNameError

NAMES = ["digits", "mlp", "mobilenet", "tiny-bert"]


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=240)


def _torch_out(model, feeds):
    import torch

    module = model.torch_module
    with torch.no_grad():
        return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def _ort_out(model, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.to_bytes(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


# --------------------------------------------------------------------------------------------
# names, info, errors (no torch)
# --------------------------------------------------------------------------------------------
def test_names():
    assert eb.zoo.names() == sorted(NAMES + ["efficientnet-lite0"])  # the latter: test_zoo_efficientnet.py


def test_info_entries():
    for name in NAMES:
        e = eb.zoo.info(name)
        assert e.name == name
        assert e.outputs[0].name == "logits"
        assert all(s.shape[0] == "batch" for s in (*e.inputs, *e.outputs))
        assert e.random_weights == (name != "digits")
        assert ("random weights" in e.description) == e.random_weights
        assert repr(e).startswith(f"ZooEntry({name!r}")
    assert "trained" in eb.zoo.info("digits").description
    assert eb.zoo.info("digits").dataset == "digits"
    assert str(eb.zoo.info("mobilenet").inputs[0]) == "input: float32[batch,3,224,224]"
    with pytest.raises(dataclasses.FrozenInstanceError):
        eb.zoo.info("mlp").name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("call", [eb.zoo.info, eb.zoo.load, eb.zoo.sample, eb.zoo.build_module])
def test_unknown_name_lists_known_names(call):
    with pytest.raises(UnknownNameError) as exc:
        call("resnet-9000")
    msg = str(exc.value)
    assert "resnet-9000" in msg
    assert all(n in msg for n in NAMES)
    assert isinstance(exc.value, KeyError)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def test_digits_splits_partition_the_data():
    from sklearn.datasets import load_digits

    splits = {s: eb.zoo.dataset("digits", split=s) for s in ("train", "calibration", "test")}
    assert {s: len(X) for s, (X, _) in splits.items()} == {"train": 1257, "calibration": 180, "test": 360}
    for X, y in splits.values():
        assert X.dtype == np.float32 and X.shape[1:] == (1, 8, 8)
        assert y.dtype == np.int64 and y.shape == (len(X),)
        assert 0.0 <= X.min() and X.max() <= 1.0
        assert set(np.unique(y)) == set(range(10))

    # as multisets of (image, label) rows the three splits together are exactly the data set,
    # so they are disjoint and cover it
    def rows(X, y):
        r = np.concatenate([X.reshape(len(X), -1), y[:, None].astype(np.float32)], axis=1)
        return r[np.lexsort(r.T[::-1])]

    d = load_digits()
    ours = rows(np.concatenate([X for X, _ in splits.values()]), np.concatenate([y for _, y in splits.values()]))
    ref = rows(d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))
    np.testing.assert_array_equal(ours, ref)


def test_dataset_is_fixed_and_copied():
    X1, y1 = eb.zoo.dataset("digits", "test")
    X1[:] = -1.0
    X2, y2 = eb.zoo.dataset("digits")  # default split is "test"
    assert X2.min() >= 0.0
    np.testing.assert_array_equal(y1, y2)


def test_dataset_errors():
    with pytest.raises(ConfigError, match="validation"):
        eb.zoo.dataset("digits", split="validation")
    with pytest.raises(UnknownNameError, match="digits"):
        eb.zoo.dataset("imagenet")


def test_sample_shapes_dtypes_and_seeds():
    for name in NAMES:
        e = eb.zoo.info(name)
        feeds = eb.zoo.sample(name, batch_size=3)
        assert list(feeds) == [s.name for s in e.inputs]
        for spec in e.inputs:
            a = feeds[spec.name]
            assert a.dtype == np.dtype(spec.dtype)
            assert a.shape == (3, *spec.shape[1:])
        again = eb.zoo.sample(name, batch_size=3, seed=0)
        other = eb.zoo.sample(name, batch_size=3, seed=1)
        k = e.inputs[0].name
        np.testing.assert_array_equal(feeds[k], again[k])
        assert not np.array_equal(feeds[k], other[k])
    ids = eb.zoo.sample("tiny-bert", batch_size=4)["input_ids"]
    assert ids.min() >= 0 and ids.max() < 30522
    # digits samples are real test images
    X, _ = eb.zoo.dataset("digits", "test")
    for img in eb.zoo.sample("digits", batch_size=5, seed=3)["input"]:
        assert (X == img).all(axis=(1, 2, 3)).any()
    assert eb.zoo.sample("digits", batch_size=400)["input"].shape == (400, 1, 8, 8)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError):
            eb.zoo.sample("mlp", batch_size=bad)


# --------------------------------------------------------------------------------------------
# building, exporting, caching (torch)
# --------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_digits_accuracy_with_onnxruntime(zoo_cache):
    import onnxruntime as ort

    model = eb.zoo.load("digits")
    assert (zoo_cache / "digits-v1.onnx").is_file() and (zoo_cache / "digits-v1.pt").is_file()
    X, y = eb.zoo.dataset("digits", split="test")
    sess = ort.InferenceSession(model.to_bytes(), providers=["CPUExecutionProvider"])
    acc = float((sess.run(["logits"], {"input": X})[0].argmax(1) == y).mean())
    assert acc >= 0.95


@pytest.mark.torch
@pytest.mark.parametrize("name", NAMES)
def test_onnx_matches_torch_and_signature(zoo_cache, name):
    model = eb.zoo.load(name)
    e = eb.zoo.info(name)
    assert model.name == name and model.source == f"zoo:{name}" and model.description == e.description
    assert model.inputs == list(e.inputs) and model.outputs == list(e.outputs)
    assert model.opset.get("ai.onnx") == 17
    feeds = eb.zoo.sample(name, batch_size=2, seed=7)  # batch 2: the export's batch 1 is dynamic
    ours, ref = _ort_out(model, feeds), _torch_out(model, feeds)
    assert ours.shape == (2, e.outputs[0].shape[1])
    assert np.isfinite(ours).all() and np.abs(ref).max() > 0
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.torch
def test_cache_hit_does_not_rebuild(zoo_cache):
    first = eb.zoo.load("mlp")
    mtime = (zoo_cache / "mlp-v1.onnx").stat().st_mtime_ns
    t0 = time.perf_counter()
    second = eb.zoo.load("mlp")
    elapsed = time.perf_counter() - t0
    assert second.sha256 == first.sha256
    assert (zoo_cache / "mlp-v1.onnx").stat().st_mtime_ns == mtime  # not rewritten
    assert elapsed < 1.0
    # the torch module of a cache hit is rebuilt lazily from the cached state dict
    assert second._torch_module is None
    feeds = eb.zoo.sample("mlp", batch_size=2)
    np.testing.assert_allclose(_torch_out(second, feeds), _ort_out(second, feeds), atol=1e-5, rtol=0)
    assert not list(zoo_cache.glob("*.tmp"))


@pytest.mark.torch
def test_builds_are_deterministic(zoo_cache, tmp_path):
    for name in ("mlp", "digits"):
        a = eb.zoo.load(name, cache_dir=tmp_path / "a")
        b = eb.zoo.load(name, cache_dir=tmp_path / "b")
        assert a.sha256 == b.sha256 == eb.zoo.load(name).sha256
        assert (tmp_path / "a" / f"{name}-v1.onnx").read_bytes() == b.to_bytes()


@pytest.mark.torch
def test_rebuild_and_corrupt_cache(tmp_path):
    ref = eb.zoo.load("mlp", cache_dir=tmp_path)
    path = tmp_path / "mlp-v1.onnx"
    os.utime(path, ns=(0, 0))
    assert eb.zoo.load("mlp", cache_dir=tmp_path, rebuild=True).sha256 == ref.sha256
    assert path.stat().st_mtime_ns > 0  # rewritten
    path.write_bytes(b"\x08\x07garbage")  # a truncated / corrupt file is rebuilt when torch is here
    assert eb.zoo.load("mlp", cache_dir=tmp_path).sha256 == ref.sha256
    assert path.read_bytes() == ref.to_bytes()


@pytest.mark.torch
def test_mobilenet_parameters_and_folded_batchnorm(zoo_cache):
    model = eb.zoo.load("mobilenet")
    n = sum(p.numel() for p in model.torch_module.parameters())
    assert 3_000_000 <= n <= 4_000_000
    assert 3_000_000 <= model.n_params <= 4_000_000
    assert "BatchNormalization" not in model.op_counts
    assert model.op_counts["Conv"] == 52 and "Clip" in model.op_counts  # ReLU6


@pytest.mark.torch
def test_tiny_bert_signature_and_shape(zoo_cache):
    from torch import nn

    model = eb.zoo.load("tiny-bert")
    assert [str(s) for s in model.inputs] == ["input_ids: int64[batch,128]"]
    assert [str(s) for s in model.outputs] == ["logits: float32[batch,2]"]
    module = model.torch_module
    assert module.tok.weight.shape == (30522, 384)
    assert len(module.layers) == 6
    assert module.layers[0].heads == 12 and module.layers[0].ffn[0].out_features == 1536
    assert not any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer)) for m in module.modules())
    assert model.op_counts.get("Softmax") == 6


@pytest.mark.torch
def test_build_module(zoo_cache):
    import torch

    module, example, in_names, out_names = eb.zoo.build_module("mlp")
    assert not module.training
    assert in_names == ["input"] and out_names == ["logits"]
    assert isinstance(example, tuple) and example[0].shape == (1, 784)
    cached = eb.zoo.load("mlp").torch_module
    for k, v in module.state_dict().items():
        assert torch.equal(v, cached.state_dict()[k])


@pytest.mark.torch
def test_concurrent_builds_do_not_corrupt_the_cache(tmp_path):
    code = f"""
        import edgebench as eb
        print(eb.zoo.load("mlp", cache_dir={str(tmp_path)!r}).sha256)
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    shas = {o.strip() for o, _ in outs}
    assert len(shas) == 1
    assert eb.zoo.load("mlp", cache_dir=tmp_path).sha256 == shas.pop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp-v1.onnx", "mlp-v1.pt"]


@pytest.mark.torch
def test_without_torch(zoo_cache, tmp_path):
    """A cache hit needs no torch; a miss says how to get it; digits data needs no torch."""
    eb.zoo.load("mlp")  # make sure it is cached
    code = f"""
        import sys

        class NoTorch:  # behave as if torch were not installed
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("No module named 'torch'")

        sys.meta_path.insert(0, NoTorch())
        import edgebench as eb
        from edgebench.errors import ModelLoadError
        X, y = eb.zoo.dataset("digits", "calibration")
        assert X.shape == (180, 1, 8, 8)
        m = eb.zoo.load("mlp")
        assert m.source == "zoo:mlp" and m.inputs[0].name == "input"
        print(m.sha256)
        try:
            m.torch_module
        except ModelLoadError as e:
            print("TORCH_MODULE:", e)
        try:
            eb.zoo.load("mlp", cache_dir={str(tmp_path / "empty")!r})
        except ModelLoadError as e:
            print("MISS:", e)
        assert "torch" not in sys.modules
    """
    r = _run_python(code, {"EDGEBENCH_CACHE": os.environ["EDGEBENCH_CACHE"]})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == eb.zoo.load("mlp").sha256
    assert lines[1].startswith("TORCH_MODULE:") and "PyTorch" in lines[1]
    assert lines[2].startswith("MISS:") and "pip install torch==2.13.0" in lines[2].lower()
