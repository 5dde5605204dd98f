"""edgebench._registry (the one lookup-by-name mechanism) and edgebench.config (settings)."""
from __future__ import annotations

import os
import textwrap

import pytest

from edgebench._registry import Registry
from edgebench.config import Settings, settings
from edgebench.errors import ConfigError, UnknownNameError


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_register_decorator_and_direct():
    reg: Registry = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    def beta():
        return "b"

    assert reg.register("beta", beta) is beta
    assert reg.get("alpha") is Alpha  # the decorator returns the class unchanged
    assert reg.get("beta")() == "b"
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg and 3 not in reg
    assert "widget" in repr(reg) and "alpha" in repr(reg)


def test_reregistering_replaces():
    reg: Registry = Registry("thing")
    reg.register("x", 1)
    reg.register("x", 2)
    assert reg.get("x") == 2 and reg.names() == ["x"]


def test_unknown_name_lists_known_names():
    reg: Registry = Registry("scenario")
    reg.register("offline", object())
    reg.register("server", object())
    with pytest.raises(UnknownNameError) as e:
        reg.get("sever")
    msg = str(e.value)
    assert "unknown scenario 'sever'" in msg
    assert "offline, server" in msg
    assert isinstance(e.value, KeyError)  # callers catching KeyError keep working
    assert not msg.startswith("'")  # not KeyError's repr-style message


def test_unknown_name_in_empty_registry():
    with pytest.raises(UnknownNameError, match=r"\(none\)"):
        Registry("gadget").get("x")


def test_entry_point_fallback(tmp_path, monkeypatch):
    """A real installed distribution (a dist-info on sys.path) advertising an entry point."""
    group = "edgebench.test_registry_plugins"
    (tmp_path / "eb_test_plugin.py").write_text("class Plugin:\n    name = 'from-plugin'\n")
    dist = tmp_path / "eb_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: eb-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\nmyplugin = eb_test_plugin:Plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("plugin", entry_point_group=group)
    reg.register("builtin", object())
    assert reg.names() == ["builtin", "myplugin"]
    assert "myplugin" in reg
    obj = reg.get("myplugin")
    assert obj.name == "from-plugin"
    assert reg._items["myplugin"] is obj  # loaded once, then cached
    with pytest.raises(UnknownNameError, match="builtin, myplugin"):
        reg.get("other")


# --------------------------------------------------------------------------------------------
# settings: defaults < config file < env vars < arguments
# --------------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No EDGEBENCH_* variables, and a HOME whose ~/.config/edgebench/config.toml does not exist."""
    for k in list(os.environ):
        if k.startswith("EDGEBENCH_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


def _config(tmp_path, monkeypatch, text: str):
    path = tmp_path / "edgebench.toml"
    path.write_text(textwrap.dedent(text))
    monkeypatch.setenv("EDGEBENCH_CONFIG", str(path))
    return path


def test_defaults(clean_env):
    s = settings()
    assert s == Settings()
    assert s.cache_dir == os.path.join(str(clean_env / "xdg-cache"), "edgebench")
    assert s.threads is None and s.backend == "onnxruntime" and s.record_capacity == 16384


def test_home_config_file_is_read(clean_env):
    cfg = clean_env / "home" / ".config" / "edgebench" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("threads = 3\n")
    assert settings().threads == 3


def test_precedence_file_env_arguments(clean_env, monkeypatch):
    _config(clean_env, monkeypatch, """
        cache_dir = "/from/file"
        threads = 2
        backend = "torch"
        record_capacity = 1024
    """)
    s = settings()
    assert (s.cache_dir, s.threads, s.backend, s.record_capacity) == ("/from/file", 2, "torch", 1024)

    monkeypatch.setenv("EDGEBENCH_CACHE", "/from/env")
    monkeypatch.setenv("EDGEBENCH_THREADS", "4")
    s = settings()
    assert (s.cache_dir, s.threads, s.backend, s.record_capacity) == ("/from/env", 4, "torch", 1024)

    s = settings(threads=1, record_capacity=256)
    assert (s.cache_dir, s.threads, s.backend, s.record_capacity) == ("/from/env", 1, "torch", 256)


def test_env_without_file(clean_env, monkeypatch):
    monkeypatch.setenv("EDGEBENCH_CONFIG", str(clean_env / "missing.toml"))  # absent file: ignored
    monkeypatch.setenv("EDGEBENCH_BACKEND", "torch")
    monkeypatch.setenv("EDGEBENCH_RECORD_CAPACITY", "128")
    s = settings()
    assert s.backend == "torch" and s.record_capacity == 128


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"threads": -1}, {"threads": "2"},
                                    {"record_capacity": 1000}, {"record_capacity": 8}])
def test_bad_arguments(clean_env, kwargs):
    with pytest.raises(ConfigError):
        settings(**kwargs)


def test_unknown_argument_lists_known(clean_env):
    with pytest.raises(ConfigError, match="record_capacity") as e:
        settings(thread=2)
    assert "thread" in str(e.value)


def test_bad_env_value_names_the_variable(clean_env, monkeypatch):
    monkeypatch.setenv("EDGEBENCH_THREADS", "many")
    with pytest.raises(ConfigError, match="EDGEBENCH_THREADS"):
        settings()


def test_bad_env_value_fails_even_when_overridden(clean_env, monkeypatch):
    # the environment is parsed before arguments are applied: a broken variable is reported
    monkeypatch.setenv("EDGEBENCH_RECORD_CAPACITY", "lots")
    with pytest.raises(ConfigError, match="EDGEBENCH_RECORD_CAPACITY"):
        settings(record_capacity=64)


def test_invalid_toml(clean_env, monkeypatch):
    path = _config(clean_env, monkeypatch, "threads = = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        settings()
    assert str(path) in str(e.value)


def test_unknown_key_in_file(clean_env, monkeypatch):
    _config(clean_env, monkeypatch, "thread = 2\n")
    with pytest.raises(ConfigError, match="unknown keys") as e:
        settings()
    assert "threads" in str(e.value)  # the known keys are listed


def test_bad_value_in_file(clean_env, monkeypatch):
    _config(clean_env, monkeypatch, 'record_capacity = "big"\n')
    with pytest.raises(ConfigError, match="record_capacity"):
        settings()
    _config(clean_env, monkeypatch, "record_capacity = 100\n")
    with pytest.raises(ConfigError, match="power of two"):
        settings()
