"""The graph executor: an event-driven scheduler over a compiled plan.

A step starts as soon as all its inputs are ready (Triton ensemble semantics); independent
branches run concurrently on a small thread pool; an intermediate tensor is dropped as soon as
its last consumer has started; :meth:`CompiledGraph.submit` caps the requests in flight, which
bounds the intermediates held in memory.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from ..errors import EdgebenchError, GraphError
from .api import Node

__all__ = ["CompiledGraph", "Step", "run_node"]

_TIMING_LOCK = threading.Lock()


def run_node(node: Node, values: Mapping[str, Any], engine: Any) -> dict[str, Any]:
    """Run one node on ``values`` (graph tensor -> array); return graph tensor -> array."""
    try:
        if node.kind == "model":
            if engine is None:
                from ..engine import Engine

                engine = Engine(node.model, threads=1, record=False)
            outs = engine.run({port: values[t] for port, t in node.inputs.items()})
            return {t: outs[port] for port, t in node.outputs.items()}
        if all(k.isdigit() for k in node.inputs):
            result = node.fn(*[values[t] for t in node.inputs.values()])
        else:
            result = node.fn(**{k: values[t] for k, t in node.inputs.items()})
    except EdgebenchError as e:
        raise GraphError(f"node {node.name!r} failed: {e}") from e
    except Exception as e:
        raise GraphError(f"node {node.name!r} failed: {type(e).__name__}: {e}") from e
    names = node.output_tensors
    if len(names) == 1:
        return {names[0]: result}
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        got = len(result) if isinstance(result, (tuple, list)) else type(result).__name__
        raise GraphError(f"node {node.name!r} returned {got} values, its outputs are {names}",
                         "return a tuple with one value per output")
    return dict(zip(names, result))


@dataclass
class Step:
    """A node placed on a backend and device, with its engine (model nodes) built."""

    node: Node
    backend: str | None
    device: str
    engine: Any = None
    #: ``{"total_ns": int, "count": int}``: time spent in this step, summed over its runs
    timing: dict[str, int] = field(default_factory=lambda: {"total_ns": 0, "count": 0}, repr=False)

    @classmethod
    def build(cls, node: Node, backend: str | None, device: str, threads: int | None) -> Step:
        engine = None
        if node.kind == "model":
            from ..engine import Engine

            try:
                engine = Engine(node.model, backend=backend, device=device, threads=threads, record=False)
            except EdgebenchError as e:
                raise GraphError(f"node {node.name!r} cannot be placed on {backend or 'default backend'}/{device}: {e}",
                                 "pass another device= to compile() or to Graph.add()") from e
        return cls(node, engine.backend if engine else "python", device if engine else "python", engine)

    def __call__(self, values: Mapping[str, Any]) -> dict[str, Any]:
        t0 = perf_counter_ns()
        try:
            return run_node(self.node, values, self.engine)
        finally:
            dt = perf_counter_ns() - t0
            with _TIMING_LOCK:
                self.timing["total_ns"] += dt
                self.timing["count"] += 1


class CompiledGraph:
    """A validated, optimized and placed graph.  Made by :meth:`Graph.compile`.

    Attributes
    ----------
    steps
        The :class:`Step` s in topological order (fused chains are one step).
    inputs, outputs
        The tensors :meth:`run` needs and returns.
    plan
        ``{"folded": [...], "eliminated": [...], "fused": [[names], ...], "notes": [...]}``.
    """

    def __init__(self, name: str, steps: list[Step], inputs: list[str], outputs: list[str],
                 constants: dict[str, Any], plan: dict[str, Any], *, max_workers: int = 2,
                 max_inflight: int = 4):
        self.name = name
        self.steps = steps
        self.inputs = inputs
        self.outputs = outputs
        self.constants = constants
        self.plan = plan
        self.max_workers = max(1, int(max_workers))
        self.max_inflight = max(1, int(max_inflight))
        producer = {t: i for i, s in enumerate(steps) for t in s.node.output_tensors}
        self._deps = [sorted({producer[t] for t in s.node.input_tensors if t in producer}) for s in steps]
        self._children: list[list[int]] = [[] for _ in steps]
        for i, ds in enumerate(self._deps):
            for d in ds:
                self._children[d].append(i)
        # how many steps read each tensor: it is released when the count reaches zero
        self._readers: dict[str, int] = {}
        for s in steps:
            for t in set(s.node.input_tensors):
                self._readers[t] = self._readers.get(t, 0) + 1
        self._pool: ThreadPoolExecutor | None = None
        self._req_pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- running ------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run one request: ``{graph input: array}`` -> ``{graph output: array}``."""
        if not isinstance(feeds, Mapping):
            raise GraphError(f"graph {self.name!r} takes a dict of input tensors, got {type(feeds).__name__}",
                             f"pass {{{', '.join(repr(i) for i in self.inputs)}: ...}}")
        missing = [t for t in self.inputs if t not in feeds]
        if missing:
            needers = [s.node.name for s in self.steps if set(missing) & set(s.node.input_tensors)]
            raise GraphError(f"graph {self.name!r}: missing graph inputs {missing} (needed by nodes {needers})",
                             f"feed all of {self.inputs}")
        values: dict[str, Any] = dict(self.constants)
        values.update(feeds)
        readers = dict(self._readers)
        keep = set(self.outputs)

        def consume(i: int) -> dict[str, Any]:
            node = self.steps[i].node
            args = {t: values[t] for t in node.input_tensors}
            for t in set(node.input_tensors):  # drop intermediates nobody else will read
                readers[t] -= 1
                if readers[t] == 0 and t not in keep:
                    values.pop(t, None)
            return args

        n = len(self.steps)
        waiting = [len(d) for d in self._deps]
        ready = [i for i in range(n) if waiting[i] == 0]
        running: dict[Future, int] = {}
        finished = 0
        while finished < n:
            if len(ready) == 1 and not running:  # nothing to overlap with: run inline, no hop
                i = ready.pop()
                out = self.steps[i](consume(i))
                done_steps = [(i, out)]
            else:
                pool = self._pool or self._start_pool()
                for i in ready:
                    running[pool.submit(self.steps[i], consume(i))] = i
                ready = []
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                done_steps = []
                for f in done:
                    i = running.pop(f)
                    try:
                        done_steps.append((i, f.result()))
                    except BaseException:
                        for g in running:
                            g.cancel()
                        raise
            for i, out in done_steps:
                values.update(out)
                finished += 1
                for c in self._children[i]:
                    waiting[c] -= 1
                    if waiting[c] == 0:
                        ready.append(c)
        return {t: values[t] for t in self.outputs}

    def submit(self, feeds: Mapping[str, Any]) -> Future[dict[str, Any]]:
        """Run a request in the background; at most ``max_inflight`` run at once."""
        with self._lock:
            if self._req_pool is None:
                self._req_pool = ThreadPoolExecutor(self.max_inflight, thread_name_prefix=f"graph-{self.name}")
        return self._req_pool.submit(self.run, feeds)

    def _start_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=f"graph-{self.name}-step")
        return self._pool

    def close(self) -> None:
        """Stop the worker threads and close the engines."""
        for p in (self._req_pool, self._pool):
            if p is not None:
                p.shutdown(wait=True)
        self._pool = self._req_pool = None
        for s in self.steps:
            if s.engine is not None:
                s.engine.close()

    def __enter__(self) -> CompiledGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the plan -----------------------------------------------------------------------------
    def explain(self) -> str:
        """The plan as text: steps in order with placement, fused groups, folded and eliminated nodes."""
        lines = [f"CompiledGraph {self.name!r}: {len(self.steps)} steps",
                 f"  inputs:  {', '.join(self.inputs) or '-'}",
                 f"  outputs: {', '.join(self.outputs)}",
                 "  order:"]
        for i, s in enumerate(self.steps):
            n = s.node
            after = ", ".join(self.steps[d].node.name for d in self._deps[i]) or "graph inputs"
            fused = f"  [fused: {' -> '.join(n.fused_from)}]" if n.fused_from else ""
            lines.append(f"    {i}. {n.name} ({n.kind}) on {s.backend}/{s.device}: "
                         f"{', '.join(n.input_tensors)} -> {', '.join(n.output_tensors)}; after {after}{fused}")
        lines.append("  fused groups: " + ("; ".join(" -> ".join(g) for g in self.plan["fused"]) or "none"))
        lines.append("  constant-folded: " + (", ".join(self.plan["folded"]) or "none"))
        lines.append("  eliminated (dead): " + (", ".join(self.plan["eliminated"]) or "none"))
        for note in self.plan["notes"]:
            lines.append("  note: " + note)
        return "\n".join(lines)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from edgebench.notebook.display import mimebundle
        return mimebundle(self, include, exclude)

    def __repr__(self) -> str:
        return (f"CompiledGraph({self.name!r}, {len(self.steps)} steps, "
                f"{len(self.plan['fused'])} fused groups)")
