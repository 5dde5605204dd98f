"""Split a compiled graph into a pipeline of contiguous parts, one per worker.

The steps of a :class:`~edgebench.graph.CompiledGraph` are in topological order; a plan cuts
that order into parts ``0 .. k-1``.  A request flows part 0 -> part 1 -> ...; at every cut the
tensors a later part (or the caller) still needs travel along.  The plan minimises the
bottleneck stage time (the pipeline's throughput limit), then the bytes crossing the network:

    stage time of a part = its compute + ``hop_ms`` + bytes it receives / bandwidth

Costs come from measured step latencies and real tensor sizes (:func:`profile_graph`).

    >>> plan = partition_graph(cg, feeds, k="auto")        # doctest: +SKIP
    >>> print(plan.explain())                              # doctest: +SKIP
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from ..errors import ConfigError, GraphError

__all__ = ["PartitionPlan", "partition_costs", "partition_graph", "profile_graph", "run_part", "run_steps"]

_TOL = 1e-9


@dataclass
class PartitionPlan:
    """A graph split into a pipeline of parts (see :func:`partition_costs`)."""

    parts: list[list[int]]  # step indices per part, in order
    part_ms: list[float]  # estimated compute per part (ms)
    cuts: list[list[str]]  # tensors sent from part i to part i+1
    cut_bytes: list[int]
    step_names: list[str]
    objective: str
    notes: list[str] = field(default_factory=list)
    stage_ms: list[float] = field(default_factory=list)  # compute + hop + receive time per part
    input_bytes: int = 0  # what the caller sends to part 0
    hop_ms: float = 0.5
    bandwidth_bytes_per_ms: float = 1e6

    @property
    def n_parts(self) -> int:
        return len(self.parts)

    @property
    def bottleneck_ms(self) -> float:
        """The slowest stage: one request per this many ms is the pipeline's throughput."""
        return max(self.stage_ms or self.part_ms or [0.0])

    @property
    def total_cut_bytes(self) -> int:
        return int(sum(self.cut_bytes))

    @property
    def latency_ms(self) -> float:
        """Estimated latency of one request through every stage (no queueing)."""
        return float(sum(self.stage_ms))

    def explain(self) -> str:
        """The plan as text: parts with their steps and ms, bytes per cut, bottleneck, latency."""
        lines = [f"PartitionPlan: {len(self.step_names)} steps in {self.n_parts} part{'s' if self.n_parts != 1 else ''}",
                 f"  objective: {self.objective}",
                 f"  costs: {self.hop_ms:g} ms per hop, {self.bandwidth_bytes_per_ms / 1e3:g} kB/ms"]
        slow = max(range(self.n_parts), key=lambda i: self.stage_ms[i]) if self.stage_ms else 0
        for i, steps in enumerate(self.parts):
            names = ", ".join(self.step_names[s] for s in steps)
            mark = "  <- bottleneck" if i == slow and self.n_parts > 1 else ""
            stage = f", stage {self.stage_ms[i]:.3f} ms" if self.stage_ms else ""
            lines.append(f"  part {i}: compute {self.part_ms[i]:.3f} ms{stage} [{names}]{mark}")
            if i < len(self.cuts):
                lines.append(f"    -> cut {i}: {_fmt_bytes(self.cut_bytes[i])} "
                             f"({', '.join(self.cuts[i]) or 'nothing'})")
        lines.append(f"  bottleneck: {self.bottleneck_ms:.3f} ms/request "
                     f"(<= {1e3 / self.bottleneck_ms:.0f} requests/s)" if self.bottleneck_ms > 0 else
                     "  bottleneck: 0 ms")
        lines.append(f"  estimated latency: {self.latency_ms:.3f} ms; bytes over the network per request: "
                     f"{_fmt_bytes(self.total_cut_bytes)} between parts + {_fmt_bytes(self.input_bytes)} in")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_pandas(self):
        """One row per part: steps, compute, bytes in and out, stage time."""
        import pandas as pd

        rows = []
        for i, steps in enumerate(self.parts):
            rows.append({"part": i, "steps": [self.step_names[s] for s in steps], "n_steps": len(steps),
                         "compute_ms": self.part_ms[i],
                         "stage_ms": self.stage_ms[i] if self.stage_ms else math.nan,
                         "bytes_in": self.input_bytes if i == 0 else self.cut_bytes[i - 1],
                         "bytes_out": self.cut_bytes[i] if i < len(self.cut_bytes) else 0,
                         "sends": self.cuts[i] if i < len(self.cuts) else []})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return (f"PartitionPlan({self.n_parts} parts of {len(self.step_names)} steps, "
                f"bottleneck {self.bottleneck_ms:.3f} ms, {self.total_cut_bytes} bytes cut)")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _cuts(n: int, step_inputs: Sequence[Sequence[str]], step_outputs: Sequence[Sequence[str]],
          start: Sequence[str], graph_outputs: Sequence[str], names: Sequence[str]) -> list[list[str]]:
    """``cuts[b]`` for b in 0..n: tensors available before step b and needed at or after it."""
    first: dict[str, int] = {}  # tensor -> boundary from which it exists
    order: list[str] = []
    for t in start:
        if t not in first:
            first[t] = 0
            order.append(t)
    for i, outs in enumerate(step_outputs):
        for t in outs:
            if t in first:
                raise GraphError(f"tensor {t!r} is produced by step {names[i]!r} but already exists "
                                 "(a graph input, a constant or another step's output)")
            first[t] = i + 1
            order.append(t)
    last: dict[str, int] = {}
    for i, ins in enumerate(step_inputs):
        for t in ins:
            if t not in first or first[t] > i:
                raise GraphError(f"step {names[i]!r} reads {t!r}, which no earlier step produces and which "
                                 "is not a graph input or constant", "the steps must be in topological order")
            last[t] = i
    for t in graph_outputs:
        if t not in first:
            raise GraphError(f"graph output {t!r} is produced by no step and is not a graph input or constant")
        last[t] = n
    return [[t for t in order if first[t] <= b <= last.get(t, -1)] for b in range(n + 1)]


def partition_costs(step_ms: Sequence[float], step_inputs: Sequence[Sequence[str]],
                    step_outputs: Sequence[Sequence[str]], tensor_bytes: Mapping[str, int],
                    graph_inputs: Sequence[str], graph_outputs: Sequence[str], k: int | str, *,
                    bandwidth_bytes_per_ms: float = 1e6, hop_ms: float = 0.5,
                    step_names: Sequence[str] | None = None, constants: Sequence[str] = ()) -> PartitionPlan:
    """Cut steps ``0..n-1`` (topological order) into contiguous parts.

    Parameters
    ----------
    step_ms
        Compute per step (ms).
    step_inputs, step_outputs
        Tensor names each step reads and writes.
    tensor_bytes
        Size of every tensor (missing ones count 0).
    graph_inputs, graph_outputs
        What the caller sends to part 0, and what the last part returns (graph outputs made
        early travel along every later cut).
    k
        Number of parts (fewer when there are fewer steps; a note says so), or ``"auto"``: the
        k whose bottleneck plus ``hop_ms`` per extra part is least, ties to fewer parts.  A
        part must save more than the hop it adds to every request, so graphs whose compute is
        cheaper than a hop stay whole.
    bandwidth_bytes_per_ms, hop_ms
        Network cost: a stage receiving ``b`` bytes pays ``hop_ms + b / bandwidth``.
    constants
        Tensors part 0 holds from the start (sent on when a later part needs them; not
        counted as input bytes).

    Returns
    -------
    PartitionPlan
        Exact: dynamic programming over cut positions, minimising the bottleneck stage time,
        then the total bytes cut (O(k n^2)).
    """
    n = len(step_ms)
    names = list(step_names) if step_names is not None else [f"step{i}" for i in range(n)]
    if n == 0:
        raise GraphError("cannot partition a graph with no steps")
    if not (len(step_inputs) == len(step_outputs) == len(names) == n):
        raise ConfigError("step_ms, step_inputs, step_outputs and step_names must have one entry per step")
    if bandwidth_bytes_per_ms <= 0 or hop_ms < 0:
        raise ConfigError("bandwidth_bytes_per_ms must be positive and hop_ms not negative")
    auto = k == "auto"
    if not auto and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ConfigError(f"k={k!r} is not a number of parts", 'pass an int >= 1 or "auto"')
    cuts = _cuts(n, step_inputs, step_outputs, list(graph_inputs) + list(constants), graph_outputs, names)
    cut_b = [sum(int(tensor_bytes.get(t, 0)) for t in c) for c in cuts]
    in_bytes = sum(int(tensor_bytes.get(t, 0)) for t in dict.fromkeys(graph_inputs))
    recv = [in_bytes] + cut_b[1:n]  # bytes a part starting at step a receives
    prefix = [0.0]
    for ms in step_ms:
        prefix.append(prefix[-1] + float(ms))

    def stage(a: int, b: int) -> float:  # steps a..b-1 as one part
        return prefix[b] - prefix[a] + hop_ms + recv[a] / bandwidth_bytes_per_ms

    notes: list[str] = []
    kmax = n if auto else min(k, n)
    if not auto and k > n:
        notes.append(f"asked for {k} parts, the graph has {n} step{'s' if n != 1 else ''}: made {n}")
    # g[j][b]: least bottleneck of steps 0..b-1 in j parts
    g = [[math.inf] * (n + 1) for _ in range(kmax + 1)]
    g[0][0] = 0.0
    for j in range(1, kmax + 1):
        for b in range(j, n + 1):
            g[j][b] = min(max(g[j - 1][a], stage(a, b)) for a in range(j - 1, b))
    if auto:
        score = [g[j][n] + hop_ms * (j - 1) for j in range(1, kmax + 1)]
        best = min(score)
        kk = 1 + next(i for i, s in enumerate(score) if s <= best + _TOL * max(1.0, best))
        objective = (f"bottleneck stage time + {hop_ms:g} ms per extra part (auto chose {kk} of 1..{n}), "
                     "then bytes between parts")
        if kk == 1 and n > 1:
            notes.append("kept whole: no split lowers the bottleneck by more than the hop it adds")
    else:
        kk = kmax
        objective = f"bottleneck stage time over {kk} parts, then bytes between parts"
    limit = g[kk][n] + _TOL * max(1.0, g[kk][n])
    # h[j][b]: fewest bytes cut for steps 0..b-1 in j parts with every stage within the bottleneck
    h = [[math.inf] * (n + 1) for _ in range(kk + 1)]
    arg = [[-1] * (n + 1) for _ in range(kk + 1)]
    h[0][0] = 0.0
    for j in range(1, kk + 1):
        for b in range(j, n + 1):
            out = cut_b[b] if b < n else 0
            for a in range(j - 1, b):
                if h[j - 1][a] < math.inf and stage(a, b) <= limit:
                    v = h[j - 1][a] + out
                    if v < h[j][b]:
                        h[j][b], arg[j][b] = v, a
    bounds, b = [n], n
    for j in range(kk, 0, -1):
        b = arg[j][b]
        bounds.append(b)
    bounds.reverse()
    parts = [list(range(bounds[i], bounds[i + 1])) for i in range(kk)]
    return PartitionPlan(parts=parts,
                         part_ms=[prefix[bounds[i + 1]] - prefix[bounds[i]] for i in range(kk)],
                         cuts=[list(cuts[bounds[i]]) for i in range(1, kk)],
                         cut_bytes=[cut_b[bounds[i]] for i in range(1, kk)],
                         step_names=names, objective=objective, notes=notes,
                         stage_ms=[stage(bounds[i], bounds[i + 1]) for i in range(kk)],
                         input_bytes=in_bytes, hop_ms=hop_ms, bandwidth_bytes_per_ms=bandwidth_bytes_per_ms)


def _nbytes(v: Any) -> int:
    nb = getattr(v, "nbytes", None)
    if isinstance(nb, int):
        return nb
    return len(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL))


def profile_graph(cg: Any, feeds: Mapping[str, Any], rounds: int = 10) -> tuple[list[float], dict[str, int]]:
    """Measure ``cg``: mean ms per step and bytes per tensor.

    Runs the steps one after another on ``feeds`` (one warm-up round, then ``rounds`` timed
    with ``perf_counter``), and records ``nbytes`` of every value seen (graph inputs and
    constants included).
    """
    from ..graph.executor import run_node

    if rounds < 1:
        raise ConfigError(f"rounds={rounds} must be at least 1")
    total = [0.0] * len(cg.steps)
    sizes: dict[str, int] = {}
    for r in range(rounds + 1):
        values: dict[str, Any] = dict(cg.constants)
        values.update(feeds)
        for i, step in enumerate(cg.steps):
            node = step.node
            args = {t: values[t] for t in node.input_tensors}
            t0 = perf_counter()
            out = run_node(node, args, step.engine)
            dt = perf_counter() - t0
            if r:
                total[i] += dt
            values.update(out)
        if not r:
            sizes = {t: _nbytes(v) for t, v in values.items()}
    return [t * 1e3 / rounds for t in total], sizes


def partition_graph(cg: Any, feeds: Mapping[str, Any], k: int | str = "auto", **kw: Any) -> PartitionPlan:
    """:func:`profile_graph` then :func:`partition_costs` on ``cg`` (keywords go to either;
    ``rounds`` to the profiler)."""
    step_ms, sizes = profile_graph(cg, feeds, rounds=kw.pop("rounds", 10))
    steps = cg.steps
    return partition_costs(step_ms, [s.node.input_tensors for s in steps], [s.node.output_tensors for s in steps],
                           sizes, list(cg.inputs), list(cg.outputs), k,
                           step_names=[s.node.name for s in steps], constants=list(cg.constants), **kw)


def run_steps(steps: Sequence[tuple[Any, Any]], have: dict[str, Any], send: Sequence[str],
              where: str = "part") -> dict[str, Any]:
    """Run ``(node, engine)`` steps in order on ``have`` (tensor -> array, updated in place)
    and return the tensors in ``send``: one part of a plan, here or on a worker."""
    from ..graph.executor import run_node

    for node, engine in steps:
        missing = [t for t in node.input_tensors if t not in have]
        if missing:
            raise GraphError(f"{where}: step {node.name!r} needs {missing}, which the part was not given",
                             "pass part 0 the feeds and part i the tensors of plan.cuts[i - 1]")
        have.update(run_node(node, {t: have[t] for t in node.input_tensors}, engine))
    return {t: have[t] for t in send}


def run_part(cg: Any, plan: PartitionPlan, index: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """Run part ``index`` of ``plan`` on ``values`` and return what it sends on.

    Part 0 takes the feeds (constants are added here); part i > 0 takes exactly the tensors
    of ``plan.cuts[i - 1]``.  Returns ``plan.cuts[index]``'s tensors, or the graph outputs for
    the last part.
    """
    have: dict[str, Any] = dict(cg.constants) if index == 0 else {}
    have.update(values)
    send = plan.cuts[index] if index < len(plan.cuts) else list(cg.outputs)
    return run_steps([(cg.steps[i].node, cg.steps[i].engine) for i in plan.parts[index]], have, send,
                     f"part {index}")
