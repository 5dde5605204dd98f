"""The graph compiler: validate, optimize (fold, prune, fuse) and place a :class:`Graph`.

Optimizations (each measured in ``benchmarks/graph_fusion.py``):

* constant folding: a function (or model) node whose inputs are all constants runs once,
  here, and its outputs become constants;
* dead-node elimination: nodes whose outputs no graph output needs are dropped;
* fusion: a model node whose outputs feed only the next model node is merged with it into
  one ONNX model (``onnx.compose.merge_models``), so onnxruntime optimizes across the
  boundary and the intermediate tensors never reach Python.
"""
from __future__ import annotations

import copy
from typing import Any

from ..errors import GraphError
from .api import Graph, Node
from .shapes import check_shapes

__all__ = ["compile_graph", "topological_order", "validate"]


def topological_order(nodes: list[Node], available: set[str]) -> list[Node]:
    """Kahn's algorithm (stable: ties keep insertion order); raises GraphError on a cycle."""
    producer = {t: n.name for n in nodes for t in n.output_tensors}
    deps = {n.name: {producer[t] for t in n.input_tensors if t in producer and t not in available}
            for n in nodes}
    order: list[Node] = []
    done: set[str] = set()
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if deps[n.name] <= done]
        if not ready:
            cyc = _find_cycle(deps, {n.name for n in pending})
            raise GraphError(f"the graph has a cycle through nodes {' -> '.join(cyc)}",
                             "a node may not (indirectly) read a tensor it writes")
        for n in ready:
            order.append(n)
            done.add(n.name)
        pending = [n for n in pending if n.name not in done]
    return order


def _find_cycle(deps: dict[str, set[str]], left: set[str]) -> list[str]:
    start = min(left)
    path, seen, cur = [], {}, start
    while cur not in seen:  # every pending node has a pending dependency: walk until we loop
        seen[cur] = len(path)
        path.append(cur)
        cur = min(d for d in deps[cur] if d in left)
    return path[seen[cur]:] + [cur]


def validate(graph: Graph) -> list[Node]:
    """Check ``graph``; return its nodes in topological order.

    Raises :class:`GraphError` naming the node for: a tensor written by two nodes, a model
    input left unconnected, a tensor read that no node writes and that is not a declared
    input or constant, an output nobody writes, a dtype or shape mismatch between a
    producing and a consuming model (declared signatures, then shapes propagated through
    the models by ONNX shape inference: :func:`~edgebench.graph.shapes.check_shapes`), and
    a cycle.
    """
    if not graph.nodes:
        raise GraphError(f"graph {graph.name!r} has no nodes", "add steps with Graph.add(...)")
    producer: dict[str, Node] = {}
    for n in graph.nodes:
        for t in n.output_tensors:
            if t in producer:
                raise GraphError(f"tensor {t!r} is produced twice: by node {producer[t].name!r} and node {n.name!r}",
                                 "give one of the outputs another tensor name")
            if t in graph.constants:
                raise GraphError(f"node {n.name!r} writes {t!r}, which is a graph constant")
            producer[t] = n
    declared = graph._inputs
    for n in graph.nodes:
        if n.kind == "model":
            missing = [s.name for s in n.model.inputs if s.name not in n.inputs]
            if missing:
                raise GraphError(f"node {n.name!r}: model inputs {missing} are not connected",
                                 "map them to graph tensors in inputs={...}")
        for t in n.input_tensors:
            if t in producer and producer[t] is n:
                raise GraphError(f"the graph has a cycle through nodes {n.name} -> {n.name}",
                                 f"node {n.name!r} reads {t!r}, which it writes")
            if declared is not None and t not in producer and t not in graph.constants and t not in declared:
                raise GraphError(f"node {n.name!r} reads tensor {t!r}, which no node produces and is not a graph input",
                                 f"graph inputs are {declared}; check the tensor name")
    for t in graph.outputs:
        if t not in producer:
            raise GraphError(f"graph output {t!r} is produced by no node", "check the tensor name")
    _check_signatures(graph, producer)
    order = topological_order(graph.nodes, set(graph.inputs) | set(graph.constants))
    check_shapes(order)
    return order


def _check_signatures(graph: Graph, producer: dict[str, Node]) -> None:
    """A model reading a tensor another model writes must agree with it on dtype and shape."""
    for n in graph.nodes:
        if n.kind != "model":
            continue
        in_specs = {s.name: s for s in n.model.inputs}
        for port, t in n.inputs.items():
            p = producer.get(t)
            if p is None or p.kind != "model":
                continue
            out_port = next(k for k, v in p.outputs.items() if v == t)
            src = next(s for s in p.model.outputs if s.name == out_port)
            dst = in_specs[port]
            if src.dtype != dst.dtype:
                raise GraphError(f"node {n.name!r} input {port!r} expects {dst.dtype} but tensor {t!r} from node "
                                 f"{p.name!r} is {src.dtype}", "insert a conversion step between them")
            if not src.shape or not dst.shape:
                continue  # no declared shape (or a scalar): left to check_shapes' inference
            if len(src.shape) != len(dst.shape) or any(
                    isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(src.shape, dst.shape)):
                raise GraphError(f"node {n.name!r} input {port!r} expects shape {dst} but tensor {t!r} from node "
                                 f"{p.name!r} has shape {src}", "insert a reshaping step between them")


# -- optimizations ---------------------------------------------------------------------------
def fold_constants(nodes: list[Node], constants: dict[str, Any], backend: str | None, device: str) -> tuple[list[Node], list[str]]:
    """Run nodes whose inputs are all constants now; their outputs become constants."""
    from .executor import run_node

    kept, folded = [], []
    for n in nodes:  # topological order: a folded node's outputs can feed the next fold
        foldable = n.const is not False and all(t in constants for t in n.input_tensors) and (
            n.input_tensors or n.const is True)
        if n.const is True and not foldable:
            raise GraphError(f"node {n.name!r} is marked const=True but reads non-constant tensors "
                             f"{[t for t in n.input_tensors if t not in constants]}", "drop const=True")
        if foldable:
            constants.update(run_node(n, {t: constants[t] for t in n.input_tensors}, None))
            folded.append(n.name)
        else:
            kept.append(n)
    return kept, folded


def eliminate_dead(nodes: list[Node], outputs: list[str]) -> tuple[list[Node], list[str]]:
    """Drop nodes none of whose outputs any graph output needs (walking backwards)."""
    needed = set(outputs)
    live: list[Node] = []
    for n in reversed(nodes):
        if any(t in needed for t in n.output_tensors):
            live.append(n)
            needed.update(n.input_tensors)
    live.reverse()
    live_names = {n.name for n in live}
    return live, [n.name for n in nodes if n.name not in live_names]


def fuse_chains(nodes: list[Node], outputs: list[str]) -> tuple[list[Node], list[str]]:
    """Merge model node A into its only consumer B when all of A's outputs feed only B."""
    nodes = list(nodes)
    notes: list[str] = []
    k = 0
    changed = True
    while changed:
        changed = False
        for a in nodes:
            if a.kind != "model":
                continue
            outs = set(a.output_tensors)
            if outs & set(outputs):
                continue
            consumers = [n for n in nodes if outs & set(n.input_tensors)]
            if len(consumers) != 1 or consumers[0].kind != "model":
                continue
            b = consumers[0]
            if (a.device or "") != (b.device or ""):
                continue
            try:
                fused = _merge(a, b, k)
            except Exception as e:  # noqa: BLE001 - an unfusable pair just stays two steps
                notes.append(f"{a.name}+{b.name} not fused: {str(e).splitlines()[0][:120]}")
                continue
            k += 1
            i = nodes.index(a)
            nodes = [n for n in nodes if n is not a and n is not b]
            nodes.insert(min(i, len(nodes)), fused)
            changed = True
            break
    return nodes, notes


def _merge(a: Node, b: Node, k: int) -> Node:
    import onnx
    from onnx import compose

    from ..model import Model

    pa, pb = f"f{k}a_", f"f{k}b_"
    ma = compose.add_prefix(copy.deepcopy(a.model.proto), pa)
    mb = compose.add_prefix(copy.deepcopy(b.model.proto), pb)
    a_port = {t: p for p, t in a.outputs.items()}
    io_map = [(pa + a_port[t], pb + port) for port, t in b.inputs.items() if t in a_port]
    out_names = [o.name for o in mb.graph.output]
    if ma.ir_version != mb.ir_version:
        ir = max(ma.ir_version, mb.ir_version)
        ma.ir_version = mb.ir_version = ir
    merged = compose.merge_models(ma, mb, io_map=io_map, outputs=out_names,
                                  name=f"{a.name}+{b.name}")
    onnx.checker.check_model(merged)
    inputs = {pa + p: t for p, t in a.inputs.items()}
    inputs.update({pb + p: t for p, t in b.inputs.items() if t not in a_port})
    outputs = {pb + p: t for p, t in b.outputs.items()}
    model = Model(merged.SerializeToString(), name=f"{a.name}+{b.name}", source="fused", proto=merged)
    parts = (a.fused_from or [a.name]) + (b.fused_from or [b.name])
    return Node(f"{a.name}+{b.name}", "model", inputs, outputs, model=model, device=a.device,
                fused_from=parts)


def compile_graph(graph: Graph, backend: str | None = None, device: str = "cpu", *,
                  threads: int | None = 1, fuse: bool = True, fold: bool = True, prune: bool = True,
                  outputs: list[str] | None = None, max_workers: int = 2, max_inflight: int = 4):
    """Validate, optimize and place ``graph``.

    Parameters
    ----------
    backend, device
        Where model nodes run (a node's own ``device`` wins).  Default backend from settings.
    threads
        Intra-op threads of each model's engine (default 1: branches run in parallel).
    fuse, fold, prune
        Turn fusion, constant folding and dead-node elimination on or off.
    outputs
        The tensors to return (default: the graph's outputs).
    max_workers
        Threads running independent steps of one request concurrently.
    max_inflight
        Requests of :meth:`CompiledGraph.submit` running at once (bounds the intermediates
        held in memory); the others wait in a queue as their inputs only.

    Returns
    -------
    CompiledGraph
    """
    from .executor import CompiledGraph, Step

    order = validate(graph)
    outputs = list(outputs) if outputs is not None else graph.outputs
    produced = {t for n in order for t in n.output_tensors}
    for t in outputs:
        if t not in produced and t not in graph.constants and t not in graph.inputs:
            raise GraphError(f"requested output {t!r} is produced by no node of graph {graph.name!r}")
    constants = dict(graph.constants)
    plan: dict[str, Any] = {"folded": [], "eliminated": [], "fused": [], "notes": []}
    nodes = list(order)
    if fold:
        nodes, plan["folded"] = fold_constants(nodes, constants, backend, device)
    if prune:
        nodes, plan["eliminated"] = eliminate_dead(nodes, outputs)
    if fuse:
        nodes, plan["notes"] = fuse_chains(nodes, outputs)
        plan["fused"] = [n.fused_from for n in nodes if n.fused_from]
    nodes = topological_order(nodes, set(graph.inputs) | set(constants))
    steps = [Step.build(n, backend, n.device or device, threads) for n in nodes]
    needed_inputs = sorted({t for n in nodes for t in n.input_tensors if t not in constants
                            and t not in {o for m in nodes for o in m.output_tensors}}
                           | {t for t in outputs if t in graph.inputs})
    return CompiledGraph(graph.name, steps, needed_inputs, outputs, constants, plan,
                         max_workers=max_workers, max_inflight=max_inflight)
