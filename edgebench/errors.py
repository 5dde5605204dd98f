"""The error family.

Every failure a user can cause is an :class:`EdgebenchError` whose message says what was
wrong and what to do about it.  Subclasses also derive from the matching builtin
(``ValueError``, ``KeyError``, ...) so code that already catches those keeps working.
"""
from __future__ import annotations

__all__ = [
    "EdgebenchError",
    "ConfigError",
    "ModelLoadError",
    "InvalidInputError",
    "BackendUnavailableError",
    "DeviceUnavailableError",
    "UnknownNameError",
    "EngineClosedError",
    "InferenceError",
    "BenchmarkError",
    "OptimizeError",
    "DatasetError",
    "QueueFullError",
    "RequestTimeoutError",
    "ServeError",
    "GraphError",
    "ClusterError",
    "PlacementError",
    "NoReplicaError",
]


class EdgebenchError(Exception):
    """Base of every error edgebench raises on purpose.

    Parameters
    ----------
    message
        What was wrong.
    hint
        What to do about it; appended to the message.
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        if hint:
            hint = hint[:1].upper() + hint[1:]
        super().__init__(f"{message.rstrip('. ')}. {hint}" if hint else message)

    def __reduce__(self):  # keep the hint across pickling (Dask ships errors between processes)
        return (type(self), (self.message, self.hint))


class ConfigError(EdgebenchError, ValueError):
    """A setting, argument or config file value is invalid."""


class ModelLoadError(EdgebenchError, ValueError):
    """A model file, bytes or module could not be loaded or failed validation."""


class InvalidInputError(EdgebenchError, ValueError):
    """Feeds given to an engine do not match the model's input signature."""


class BackendUnavailableError(EdgebenchError, RuntimeError):
    """A backend is not installed here, or cannot run this model."""


class DeviceUnavailableError(BackendUnavailableError):
    """The requested device is not present on this machine (the message says why)."""


class UnknownNameError(EdgebenchError, KeyError):
    """A name looked up in a registry (backend, zoo model, scenario, ...) does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0] if self.args else ""


class EngineClosedError(EdgebenchError, RuntimeError):
    """The engine was closed; create a new one."""


class InferenceError(EdgebenchError, RuntimeError):
    """The backend failed while running a request that passed validation."""


class BenchmarkError(EdgebenchError, ValueError):
    """A benchmark was configured in a way that cannot produce a meaningful result."""


class OptimizeError(EdgebenchError, RuntimeError):
    """An optimization could not be set up or run (the baseline itself fails, a pass is
    unusable here, a results store is unreadable)."""


class DatasetError(EdgebenchError, ValueError):
    """A dataset given to the optimizer does not fit the model: empty, wrong shapes or
    dtypes, labels of the wrong length."""


class QueueFullError(EdgebenchError, RuntimeError):
    """A batcher's queue (or a tenant's share of it) is full; the request was not queued.
    Retry later, or raise ``max_queue_size``."""


class RequestTimeoutError(EdgebenchError, TimeoutError):
    """A request waited in a batcher's queue past its timeout and was rejected unrun."""


class ServeError(EdgebenchError, RuntimeError):
    """The model server could not start (the port is taken, the address is wrong) or failed."""


class GraphError(EdgebenchError, ValueError):
    """A model graph is invalid (a cycle, a tensor produced twice or by nobody, a missing
    graph input, a dtype or shape mismatch between a producer and a consumer) or one of its
    nodes failed; the message names the node."""


class ClusterError(EdgebenchError, RuntimeError):
    """The cluster cannot do what was asked (no scheduler, a deployment gone, retries spent)."""


class PlacementError(ClusterError):
    """No worker can hold a replica: resources or memory it asks for are not there."""


class NoReplicaError(ClusterError):
    """A request found no healthy replica to run on, and none came back in time."""
