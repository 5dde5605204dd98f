"""Shared fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """A session-wide, initially empty edgebench cache (``EDGEBENCH_CACHE``); yields its zoo dir.

    Zoo models built by one test are reused by the others, and the user's real cache is
    never touched.
    """
    root = tmp_path_factory.mktemp("edgebench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEBENCH_CACHE", str(root))
        yield root / "zoo"
