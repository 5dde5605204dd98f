"""KServe v2 bodies, limits, served-model configs and tenant rules, without a server."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebench.errors import ConfigError
from edgebench.serve.auth import ADMIN, AuthConfig, Authenticator, Tenant, TenantConfig
from edgebench.serve.config import BatchingConfig, ModelConfig, parse_batching, read_model_config
from edgebench.serve.encode import encode_infer_response
from edgebench.serve.protocol import DATATYPES, Limits, ProtocolError, Signature, datatype_of, parse_infer_request

SIG = Signature([("x", "FP32", (-1, 4)), ("ids", "INT64", (-1, 3))], [("y", "FP32", (-1, 2))], max_batch_size=8)
LIMITS = Limits()


def body_of(req: dict, *blobs: bytes) -> tuple[bytes, int | None]:
    head = json.dumps(req).encode()
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)


def parse(req: dict, *blobs: bytes, sig: Signature = SIG, limits: Limits = LIMITS):
    body, hl = body_of(req, *blobs)
    return parse_infer_request(body, hl, sig, "m", limits)


def good(n: int = 2) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [n, 4], "data": list(range(4 * n))},
                       {"name": "ids", "datatype": "INT64", "shape": [n, 3], "data": [[1, 2, 3]] * n}]}


def status_of(req: dict, *blobs: bytes, **kw) -> tuple[int, str]:
    with pytest.raises(ProtocolError) as e:
        parse(req, *blobs, **kw)
    return e.value.status, e.value.message


# -- decoding -------------------------------------------------------------------------------------
def test_json_tensors_flat_and_nested():
    r = parse(good(2))
    assert r.feeds["x"].dtype == np.float32 and r.feeds["x"].shape == (2, 4)
    assert r.feeds["x"][1, 3] == 7.0
    assert r.feeds["ids"].dtype == np.int64 and r.feeds["ids"].tolist() == [[1, 2, 3], [1, 2, 3]]
    assert r.batch == 2 and r.priority == 0 and r.timeout_us is None
    assert r.outputs == [("y", False, 0)]


def test_binary_tensors_and_output_choices():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    req = {"id": "r1", "parameters": {"binary_data_output": True, "priority": 2, "timeout": 5000},
           "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}},
                      {"name": "ids", "datatype": "INT64", "shape": [2, 3], "parameters": {"binary_data_size": 48}}]}
    r = parse(req, x.tobytes(), ids.tobytes())
    np.testing.assert_array_equal(r.feeds["x"], x)
    np.testing.assert_array_equal(r.feeds["ids"], ids)
    assert (r.id, r.priority, r.timeout_us, r.outputs) == ("r1", 2, 5000, [("y", True, 0)])
    req["outputs"] = [{"name": "y", "parameters": {"binary_data": False, "classification": 1}}]
    assert parse(req, x.tobytes(), ids.tobytes()).outputs == [("y", False, 1)]


def test_bytes_and_bool_tensors():
    sig = Signature([("s", "BYTES", (-1,)), ("b", "BOOL", (-1,))], [("o", "FP32", (-1,))])
    blob = b"".join(struct.pack("<I", len(w)) + w for w in (b"hi", b"", b"\xffz"))
    r = parse({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(blob)}},
                          {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]}]}, blob, sig=sig)
    assert r.feeds["s"].tolist() == [b"hi", b"", b"\xffz"] and r.feeds["b"].tolist() == [True, False]
    r = parse({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["héllo"]},
                          {"name": "b", "datatype": "BOOL", "shape": [1], "parameters": {"binary_data_size": 1}}]},
              b"\x01", sig=sig)
    assert r.feeds["s"][0] == "héllo".encode() and r.feeds["b"].tolist() == [True]


# -- every malformed request is a 4xx with a message that says what was wrong -----------------------
def _with(**changes) -> dict:
    req = good(1)
    req["inputs"][0].update(changes)
    return req


MALFORMED = [
    ("not an object", [1, 2], 400, "JSON object"),
    ("no inputs", {"inputs": []}, 400, "non-empty 'inputs'"),
    ("input not an object", {"inputs": ["x"]}, 400, "JSON object"),
    ("unknown input", _with(name="z"), 400, "unexpected inference input 'z'"),
    ("missing input", {"inputs": [good(1)["inputs"][0]]}, 400, "lacks"),
    ("duplicate input", {"inputs": good(1)["inputs"] * 2}, 400, "twice"),
    ("unknown datatype", _with(datatype="FP8"), 400, "unknown datatype"),
    ("datatype mismatch", _with(datatype="FP64"), 400, "expects FP32"),
    ("shape not a list", _with(shape="1,4"), 400, "non-negative integers"),
    ("negative dim", _with(shape=[-1, 4]), 400, "non-negative integers"),
    ("boolean dim", _with(shape=[True, 4]), 400, "non-negative integers"),
    ("wrong rank", _with(shape=[4]), 400, "expects [-1,4]"),
    ("wrong fixed dim", _with(shape=[1, 5], data=[0] * 5), 400, "expects [-1,4]"),
    ("batch over max", _with(shape=[9, 4], data=[0] * 36), 400, "batch size 9"),
    ("zero batch", _with(shape=[0, 4], data=[]), 400, "batch size 0"),
    ("too few values", _with(data=[1, 2, 3]), 400, "needs 4 values, got 3"),
    ("too many values", _with(data=[1] * 5), 400, "needs 4 values, got 5"),
    ("strings for FP32", _with(data=["a"] * 4), 400, "does not match its datatype"),
    ("ragged nested data", _with(data=[[1, 2], [3]]), 400, "does not match"),
    ("objects in data", _with(data=[{}, 1, 2, 3]), 400, "does not match"),
    ("no data", _with(data=None) | {"data": None}, 400, "does not match"),
    ("neither data nor binary", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}, 400,
     "neither 'data' nor"),
    ("data and binary", _with(parameters={"binary_data_size": 16}), 400, "both 'data' and binary"),
    ("parameters not an object", _with(parameters=[1]), 400, "'parameters'"),
    ("bad priority", good(1) | {"parameters": {"priority": -1}}, 400, "'priority'"),
    ("bad timeout", good(1) | {"parameters": {"timeout": "soon"}}, 400, "'timeout'"),
    ("bad binary_data_output", good(1) | {"parameters": {"binary_data_output": "yes"}}, 400, "binary_data_output"),
    ("unknown output", good(1) | {"outputs": [{"name": "nope"}]}, 400, "unexpected inference output"),
    ("outputs not a list", good(1) | {"outputs": {"name": "y"}}, 400, "'outputs'"),
    ("id not a string", good(1) | {"id": 5}, 400, "'id'"),
]


@pytest.mark.parametrize("what,req,status,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_json_requests(what, req, status, words):
    st_, msg = status_of(req)
    assert st_ == status and words in msg, msg


def test_int_data_is_checked():
    req = good(1)
    req["inputs"][1]["data"] = [1.5, 2, 3]
    assert "does not match" in status_of(req)[1]
    req["inputs"][1]["data"] = [2 ** 70, 2, 3]
    assert status_of(req)[0] == 400
    sig = Signature([("u", "UINT8", (-1,))], [("o", "FP32", (-1,))])
    assert "out of range" in status_of({"inputs": [{"name": "u", "datatype": "UINT8", "shape": [1], "data": [300]}]},
                                       sig=sig)[1]


def test_malformed_bodies_and_binary_sizes():
    x = np.zeros((1, 4), np.float32).tobytes()
    ids = np.zeros((1, 3), np.int64).tobytes()
    req = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}},
                      {"name": "ids", "datatype": "INT64", "shape": [1, 3], "parameters": {"binary_data_size": 24}}]}
    parse(req, x, ids)  # the good one
    for blobs, words in [((x, ids[:-1]), "only 23 are left"), ((x, ids, b"\0"), "add up to 40"),
                         ((x[:-4], ids, b"\0" * 4), "needs 16 bytes")]:
        msg = status_of(req, *blobs)[1] if len(blobs[0]) == 16 else None
        if msg is None:  # the sizes in the header are wrong, not the body
            bad = json.loads(json.dumps(req))
            bad["inputs"][0]["parameters"]["binary_data_size"] = 12
            bad["inputs"][1]["parameters"]["binary_data_size"] = 28
            msg = status_of(bad, *blobs)[1]
        assert words in msg, msg
    body, _ = body_of(req, x, ids)
    for wrong in (0, -3, len(body) + 1):
        with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
            parse_infer_request(body, wrong, SIG, "m", LIMITS)
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_infer_request(b'{"inputs": [', None, SIG, "m", LIMITS)
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_infer_request(b"\xff\xfe", None, SIG, "m", LIMITS)


def test_bytes_binary_framing_is_checked():
    sig = Signature([("s", "BYTES", (-1,))], [("o", "FP32", (-1,))])

    def req(size: int) -> dict:
        return {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": size}}]}
    one = struct.pack("<I", 2) + b"ab"
    assert "needs 2 elements, got 1" in status_of(req(len(one)), one, sig=sig)[1]
    assert "truncated" in status_of(req(len(one) + 2), one + b"\0\0", sig=sig)[1]
    long = one + struct.pack("<I", 99) + b"x"
    assert "runs past" in status_of(req(len(long)), long, sig=sig)[1]
    bsig = Signature([("b", "BOOL", (-1,))], [("o", "FP32", (-1,))])
    assert "other than 0 and 1" in status_of(
        {"inputs": [{"name": "b", "datatype": "BOOL", "shape": [1], "parameters": {"binary_data_size": 1}}]},
        b"\x07", sig=bsig)[1]


def test_limits():
    deep = {"inputs": good(1)["inputs"], "parameters": {"p": json.loads("[" * 40 + "]" * 40)}}
    assert status_of(deep) == (400, "JSON nested deeper than the limit of 32")
    very_deep = b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    with pytest.raises(ProtocolError) as e:
        parse_infer_request(very_deep, None, SIG, "m", LIMITS)
    assert e.value.status == 400
    small = Limits(max_header_bytes=64)
    assert status_of(good(1), limits=small)[0] == 413
    assert "rank 3, over the limit of 2" in status_of(
        {"inputs": [{"name": "t", "datatype": "FP32", "shape": [1, 1, 1], "data": [1]}]},
        sig=Signature([("t", "FP32", (-1, -1, -1))], [("o", "FP32", (-1,))]), limits=Limits(max_rank=2))[1]
    assert "over the limit of 10" in status_of(_with(shape=[3, 4], data=[0] * 12), limits=Limits(max_elements=10))[1]
    assert "over the limit of 1" in status_of(good(1), limits=Limits(max_inputs=1))[1]
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError):
            Limits(max_rank=bad)


# -- encoding -------------------------------------------------------------------------------------
def test_encode_json_binary_and_classification():
    y = np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]], np.float32)
    body, hl = encode_infer_response("m", "1", "id7", [("y", False, 0)], {"y": y})
    assert hl is None
    doc = json.loads(body)
    assert doc["id"] == "id7" and doc["model_name"] == "m" and doc["model_version"] == "1"
    assert doc["outputs"][0]["shape"] == [2, 3] and np.allclose(doc["outputs"][0]["data"], y.ravel())
    body, hl = encode_infer_response("m", "1", None, [("y", True, 0)], {"y": y})
    head = json.loads(body[:hl])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(np.frombuffer(body[hl:], np.float32).reshape(2, 3), y)
    body, hl = encode_infer_response("m", "1", None, [("y", False, 2)], {"y": y})
    out = json.loads(body)["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
    assert [s.split(":")[1] for s in out["data"]] == ["1", "2", "0", "2"]
    with pytest.raises(ProtocolError):
        encode_infer_response("m", "1", None, [("y", True, 0)], {"y": np.zeros(2, np.complex64)})


DTYPES = [k for k in DATATYPES if k != "BYTES"]


@settings(max_examples=60, deadline=None)
@given(dt=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
       binary=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_round_trip_any_datatype_and_shape(dt, shape, binary, seed):
    """What the encoder writes, the parser reads back exactly (JSON and binary)."""
    rng = np.random.default_rng(seed)
    np_dt = DATATYPES[dt]
    a = (rng.integers(0, 2, shape).astype(bool) if dt == "BOOL" else
         rng.integers(0, 100, shape).astype(np_dt) if np_dt.kind in "iu" else
         rng.standard_normal(shape).astype(np_dt))
    body, hl = encode_infer_response("m", "1", None, [("t", binary, 0)], {"t": a})
    doc = json.loads(body[:hl] if hl else body)
    t = doc["outputs"][0]
    assert t["datatype"] == dt == datatype_of(a.dtype)
    req = {"inputs": [{"name": "t", "datatype": dt, "shape": t["shape"],
                       **({"parameters": t["parameters"]} if binary else {"data": t["data"]})}]}
    sig = Signature([("t", dt, tuple(-1 for _ in shape))], [("o", "FP32", (-1,))])
    back = parse(req, *([body[hl:]] if binary else []), sig=sig).feeds["t"]
    assert back.dtype == np_dt and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


# -- served-model config ----------------------------------------------------------------------------
def test_batching_specs():
    assert parse_batching(None) is None and parse_batching("off") is None
    assert parse_batching("on") == BatchingConfig()
    b = parse_batching("max_batch_size=8,max_queue_delay_ms=0.5,preferred_batch_sizes=2/4,timeout_ms=100")
    assert (b.max_batch_size, b.max_queue_delay_ms, b.preferred_batch_sizes, b.timeout_ms) == (8, 0.5, [2, 4], 100)
    assert parse_batching({"max_queue_delay_microseconds": 300}).max_queue_delay_ms == 0.3
    for bad, words in [("max_batch_size", "key=value"), ("bogus=1", "unknown"), ("max_batch_size=0", "positive"),
                       ("max_batch_size=4,preferred_batch_sizes=8", "preferred"), ("timeout_ms=-1", "timeout")]:
        with pytest.raises(ConfigError, match=words):
            parse_batching(bad)


def test_model_config_files(tmp_path):
    assert read_model_config(tmp_path) is None
    (tmp_path / "config.toml").write_text(
        'threads = 2\nversion_policy = "all"\n[dynamic_batching]\nmax_batch_size = 16\n'
        'max_queue_delay_ms = 1.5\npreferred_batch_sizes = [4, 8]\ninstances = 2\n')
    c = read_model_config(tmp_path)
    assert c.threads == 2 and c.version_policy == "all" and c.max_batch_size == 16
    assert c.batching.preferred_batch_sizes == [4, 8] and c.batching.instances == 2
    (tmp_path / "config.toml").unlink()
    (tmp_path / "config.json").write_text(json.dumps({  # Triton's spelling
        "max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [2]},
        "instance_group": [{"count": 3}]}))
    c = read_model_config(tmp_path)
    assert (c.max_batch_size, c.batching.max_queue_delay_ms, c.batching.instances) == (4, 0.1, 3)
    (tmp_path / "config.json").write_text('{"thread": 2}')
    with pytest.raises(ConfigError, match="unknown setting"):
        read_model_config(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ConfigError, match="cannot read"):
        read_model_config(tmp_path)
    for bad in ({"dispatch": "gpu"}, {"version_policy": "newest"}, {"threads": 0}):
        with pytest.raises(ConfigError):
            ModelConfig.from_dict(bad)


# -- tenants --------------------------------------------------------------------------------------
AUTH = {"tenants": {"a": {"token": "token-of-a-123", "models": ["m1"], "rate_limit_rps": 2, "priority": 2,
                          "max_queue": 4},
                    "b": {"token": "token-of-b-456", "models": ["*"], "quota": {"requests": 3, "window_s": 60}}},
        "admin_token": "admin-token-789"}


def test_auth_config_is_validated():
    cfg = AuthConfig.from_dict(AUTH)
    assert [t.name for t in cfg.tenants] == ["a", "b"]
    assert "token-of-a" not in repr(cfg) and "admin-token" not in repr(cfg)
    for bad, words in [({}, "tenants"), ({"tenants": {"a": {"token": "short"}}}, "at least 8"),
                       ({"tenants": {"a": {"token": "x" * 8, "models": "m1"}}}, "must be a list"),
                       ({"tenants": {"a": {"token": "x" * 8, "rate": 1}}}, "unknown key"),
                       ({"tenants": {"a": {"token": "x" * 8, "priority": 0}}}, "priority"),
                       ({"tenants": {"a": {"token": "x" * 8}, "b": {"token": "x" * 8}}}, "share a token"),
                       ({"tenants": {"a": {"token": "x" * 8}}, "admins": []}, "unknown key")]:
        with pytest.raises(ConfigError, match=words):
            AuthConfig.from_dict(bad)


def test_identify_and_permissions():
    auth = Authenticator(AuthConfig.from_dict(AUTH))
    a = auth.identify(b"Bearer token-of-a-123")
    assert isinstance(a, Tenant) and a.name == "a" and a.priority == 2 and a.max_queue == 4
    assert auth.identify("bearer   token-of-b-456").name == "b"
    assert auth.identify(b"Bearer admin-token-789") == ADMIN
    for header in (None, b"", b"token-of-a-123", b"Basic dG9rZW4=", b"Bearer ", b"Bearer token-of-a-12",
                   b"Bearer token-of-a-1234"):
        with pytest.raises(ProtocolError) as e:
            auth.identify(header)
        assert e.value.status == 401 and "token-of" not in e.value.message
    auth.check_model(a, "m1")
    with pytest.raises(ProtocolError) as e:
        auth.check_model(a, "m2")
    assert e.value.status == 403
    auth.check_model(auth.tenants["b"], "anything")
    with pytest.raises(ProtocolError, match="admin token"):
        auth.require_admin(a, "loading a model")
    auth.require_admin(ADMIN, "loading a model")
    assert Authenticator(None).identify(None) is None


def test_rate_limit_and_quota():
    import time

    a = Tenant(TenantConfig("a", "token-of-a-123", rate_limit_rps=4))  # a bucket of 4
    for _ in range(4):
        a.admit()
    with pytest.raises(ProtocolError) as e:
        a.admit()
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "1" and "rate limit" in e.value.message
    time.sleep(0.3)  # refills one token (0.25 s at 4/s)
    a.admit()
    with pytest.raises(ProtocolError):
        a.admit()
    b = Tenant(TenantConfig("b", "token-of-b-456", quota_requests=3, quota_window_s=0.3))
    for _ in range(3):
        b.admit()
    with pytest.raises(ProtocolError) as e:
        b.admit()
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "1" and "quota" in e.value.message
    time.sleep(0.35)  # a new window
    b.admit()


def test_model_errors_map_to_http_statuses():
    from edgebench.errors import (EngineClosedError, InferenceError, InvalidInputError, QueueFullError,
                                  RequestTimeoutError)
    from edgebench.serve.infer import _status_of

    assert _status_of(QueueFullError("full"))[:2] == (503, "rejected")
    assert _status_of(QueueFullError("full"))[2] == {"Retry-After": "1"}
    assert _status_of(RequestTimeoutError("late"))[:2] == (504, "timeout")
    assert _status_of(InvalidInputError("bad"))[:2] == (400, "invalid")
    assert _status_of(EngineClosedError("closed"))[:2] == (503, "rejected")
    assert _status_of(InferenceError("boom"))[:2] == (500, "backend")
    assert _status_of(RuntimeError("bug"))[:2] == (500, "other")
