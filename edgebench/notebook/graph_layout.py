"""The data of the model graph view: nodes, edges with tensor shapes, a layered layout, heat.

Everything is computed here, in Python, so ``widgets/graph.js`` only draws SVG and the view
is testable without a browser:

* shapes come from ONNX shape inference;
* constant and shape-only subgraphs (``Constant``, ``Shape -> Gather -> Concat`` chains that
  exporters emit, ``Identity`` of weights) are hidden by default: they run once, or cost
  nothing, and make big graphs unreadable;
* layers are longest-path layers, the order within a layer comes from barycentric sweeps,
  and each node is then placed under its predecessors without overlaps;
* per-operator times of a :class:`~edgebench.profile.profiler.ProfileSession` are matched to
  nodes (ONNX Runtime renames the nodes it fuses; what cannot be matched is reported as
  ``unattributed_ms``).
"""
from __future__ import annotations

from typing import Any

__all__ = ["graph_data", "attribute_times", "MAX_NODES"]

#: Nodes drawn at most by default (after hiding constants); the rest is cut, and said so.
MAX_NODES = 600
NODE_H, LAYER_GAP, NODE_GAP, CHAR_W, MIN_W = 28, 56, 18, 7.0, 52
DUMMY_W, DUMMY_GAP = 2.0, 14.0  # a long edge's bend point, and its spacing
_SHAPE_ONLY = {"Shape", "Size"}
_SUFFIXES = ("_nchwc", "_output_0_nchwc", "_reorder", "_ReorderOutput", "_ReorderInput")


def _proto(model: Any) -> Any:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    proto = getattr(model, "proto", None)
    if proto is None:
        from ..model import load

        proto = load(model).proto
    return proto


def _dims(shape: Any) -> str:
    if shape is None:
        return "?"
    if len(shape) == 0:
        return "scalar"
    # shape inference names the dims it cannot resolve "unk__N": they are just unknown
    return "×".join("?" if d in (None, "") or str(d).startswith("unk__") else str(d) for d in shape)


def tensor_types(proto: Any) -> dict[str, tuple[str, str]]:
    """``{tensor name: (dtype, shape text)}`` of every tensor ONNX shape inference knows."""
    import onnx
    from onnx import helper

    inferred = proto
    # data_prop follows Shape -> Gather -> Concat -> Reshape chains, so exported graphs
    # with a dynamic batch get their shapes too
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=data_prop)
            break
        except Exception:  # shapes are a nicety: draw the graph without those it cannot give
            continue
    out: dict[str, tuple[str, str]] = {}

    def dtype_name(elem: int) -> str:
        try:
            return helper.tensor_dtype_to_np_dtype(elem).name
        except Exception:
            return f"onnx:{elem}"

    g = inferred.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        t = vi.type
        if not t.HasField("tensor_type"):
            continue
        tt = t.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        out[vi.name] = (dtype_name(tt.elem_type), _dims(shape))
    for init in g.initializer:
        out[init.name] = (dtype_name(init.data_type), _dims(list(init.dims)))
    return out


def _topological(n: int, preds: list[list[int]]) -> list[int]:
    """Kahn's algorithm, stable (ties keep file order); cycles are appended in file order."""
    import heapq

    indeg = [len(set(p)) for p in preds]
    succs: list[list[int]] = [[] for _ in range(n)]
    for v, ps in enumerate(preds):
        for p in set(ps):
            succs[p].append(v)
    heap = [v for v in range(n) if indeg[v] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        v = heapq.heappop(heap)
        order.append(v)
        for s in succs[v]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, s)
    if len(order) < n:  # an invalid (cyclic) graph: draw it anyway
        seen = set(order)
        order += [v for v in range(n) if v not in seen]
    return order


def attribute_times(ops: Any, nodes: list[Any], producer: dict[str, int]) -> tuple[dict[int, dict], float]:
    """Match profiled operators to ONNX nodes.

    Parameters
    ----------
    ops
        A DataFrame with ``op, type, calls, total_ms`` (:meth:`ProfileSession.operators`).
    nodes
        The graph's ``NodeProto`` s.
    producer
        Tensor name -> index of the node producing it.

    Returns
    -------
    (times, unattributed_ms)
        ``{node index: {"ms", "calls", "ops"}}`` and the operator time no node matched.
    """
    by_name = {n.name: i for i, n in enumerate(nodes) if n.name}
    names_by_len = sorted(by_name, key=len, reverse=True)
    times: dict[int, dict] = {}
    unattributed = 0.0
    for row in ops.itertuples(index=False):
        op, typ, ms, calls = str(row.op), str(row.type), float(row.total_ms), int(row.calls)
        idx = _match(op, typ, nodes, by_name, names_by_len, producer)
        if idx is None:
            unattributed += ms
            continue
        t = times.setdefault(idx, {"ms": 0.0, "calls": 0, "ops": []})
        t["ms"] += ms
        t["calls"] = max(t["calls"], calls)
        t["ops"].append(op)
    return times, unattributed


def _match(op: str, typ: str, nodes: list[Any], by_name: dict[str, int], names_by_len: list[str],
           producer: dict[str, int]) -> int | None:
    if op in by_name:
        return by_name[op]
    bare = op[6:] if op.startswith("fused ") else op
    if bare in by_name:
        return by_name[bare]
    # a fused node named after the tensor it writes (ONNX Runtime's NCHWc Conv + activation):
    # the tensor's producer, or the node of the profiled type a few steps up its chain
    for suffix in _SUFFIXES:
        if bare.endswith(suffix) and bare[: -len(suffix)] in producer:
            i = producer[bare[: -len(suffix)]]
            j = i
            for _ in range(4):
                if nodes[j].op_type == typ:
                    return j
                ups = [producer[x] for x in nodes[j].input if x in producer]
                if not ups:
                    break
                j = ups[0]
            return i
    if bare in producer:
        return producer[bare]
    # "<node name>/SomeFusion/...": the longest node name that prefixes the operator's name
    for name in names_by_len:
        if len(name) >= 3 and bare.startswith(name) and bare[len(name):len(name) + 1] in ("/", "_"):
            return by_name[name]
    return None


def graph_data(model: Any, profile: Any = None, *, max_nodes: int | None = MAX_NODES,
               hide_constants: bool = True) -> dict[str, Any]:
    """Nodes, edges, heat and layout of a model's ONNX graph (top level; subgraphs are a node).

    Parameters
    ----------
    model
        A :class:`~edgebench.Model`, an ``onnx.ModelProto`` or anything :func:`edgebench.load`
        takes.
    profile
        A ``ProfileSession`` (or its ``operators()`` DataFrame): per-node time becomes heat.
    max_nodes
        Draw at most this many operator nodes (in topological order); ``None`` draws all.
    hide_constants
        Hide nodes that only compute constants or shapes.

    Returns
    -------
    dict
        ``nodes`` (``id, name, op, kind, layer, x, y, w, h, label, color, outputs, weights,
        consts``), ``edges`` (``s, t, tensor, dtype, shape`` and ``points``, the bend
        points of an edge that crosses layers), ``heat`` (``{node id: {ms,
        share, calls, norm}}``, ids as strings) and ``info`` (counts, bounds, totals).
    """
    from .plots import op_color

    proto = _proto(model)
    g = proto.graph
    types = tensor_types(proto)
    init = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    pb = list(g.node)
    producer = {out: i for i, n in enumerate(pb) for out in n.output if out}
    order = _topological(len(pb), [[producer[x] for x in n.input if x in producer] for n in pb])

    # constant / shape-only nodes: computable from weights and shapes alone
    static = [False] * len(pb)
    for i in order:
        n = pb[i]
        ins = [x for x in n.input if x]
        has_graph = any(a.type in (5, 10) for a in n.attribute)  # GRAPH, GRAPHS
        if n.op_type in _SHAPE_ONLY or (n.op_type.startswith("Constant") and not has_graph):
            static[i] = True
        elif ins and not has_graph and all(x in init or (x in producer and static[producer[x]]) for x in ins):
            static[i] = True
    shown = [i for i in order if not (hide_constants and static[i])]
    n_visible = len(shown)
    truncated = max_nodes is not None and len(shown) > max_nodes
    if truncated:
        shown = shown[:max_nodes]

    # vertices: graph inputs, operator nodes, graph outputs
    graph_inputs = [v.name for v in g.input if v.name not in init]
    verts: list[dict[str, Any]] = []
    vid_of_node: dict[int, int] = {}
    vid_of_input: dict[str, int] = {}
    for name in graph_inputs:
        vid_of_input[name] = len(verts)
        verts.append(_vertex(len(verts), name, "Input", "input", types, outputs=[name]))
    for i in shown:
        n = pb[i]
        vid_of_node[i] = len(verts)
        v = _vertex(len(verts), n.name or f"{n.op_type}_{i}", n.op_type, "op", types, outputs=list(n.output))
        v["weights"] = [f"{x}: {types.get(x, ('?', '?'))[1]}" for x in n.input if x in init][:6]
        v["consts"] = sum(1 for x in n.input if x in producer and producer[x] not in vid_of_node
                          and static[producer[x]])
        if n.domain not in ("", "ai.onnx"):
            v["domain"] = n.domain
        if any(a.type in (5, 10) for a in n.attribute):
            v["subgraph"] = True
        verts.append(v)
    edges: list[dict[str, Any]] = []

    def edge(s: int, t: int, tensor: str) -> None:
        dtype, shape = types.get(tensor, ("?", "?"))
        edges.append({"s": s, "t": t, "tensor": tensor, "dtype": dtype, "shape": shape})

    for i in shown:
        for x in dict.fromkeys(x for x in pb[i].input if x):  # each tensor once per node
            if x in vid_of_input:
                edge(vid_of_input[x], vid_of_node[i], x)
            elif x in producer and producer[x] in vid_of_node:
                edge(vid_of_node[producer[x]], vid_of_node[i], x)
    for out in g.output:
        vid = len(verts)
        src = vid_of_input.get(out.name)
        if src is None and out.name in producer:
            src = vid_of_node.get(producer[out.name])
        verts.append(_vertex(vid, out.name, "Output", "output", types, outputs=[out.name]))
        if src is not None:
            edge(src, vid, out.name)

    for v in verts:
        v["color"] = {"input": "#3b3b3b", "output": "#3b3b3b"}.get(v["kind"]) or op_color(v["op"])
    bounds = _layout(verts, edges)

    heat: dict[str, dict[str, float]] = {}
    info: dict[str, Any] = {
        "name": getattr(model, "name", None) or g.name, "n_nodes": len(pb), "shown": len(shown),
        "hidden": len(pb) - n_visible, "truncated": bool(truncated), "max_nodes": max_nodes,
        "profiled": False, **bounds,
    }
    if profile is not None:
        ops = profile.operators() if hasattr(profile, "operators") else profile
        times, unattributed = attribute_times(ops, pb, producer)
        total = float(ops["total_ms"].sum()) if len(ops) else 0.0
        visible = {vid_of_node[i]: t for i, t in times.items() if i in vid_of_node}
        top = max((t["ms"] for t in visible.values()), default=0.0)
        for vid, t in visible.items():
            heat[str(vid)] = {"ms": round(t["ms"], 6), "calls": t["calls"],
                              "share": t["ms"] / total if total > 0 else 0.0,
                              "norm": t["ms"] / top if top > 0 else 0.0}
        info.update(profiled=True, total_ms=total, unattributed_ms=unattributed,
                    hidden_ms=sum(t["ms"] for i, t in times.items() if i not in vid_of_node),
                    max_ms=top, reason=(getattr(profile, "reason", None) if not len(ops) else None))
    return {"nodes": verts, "edges": edges, "heat": heat, "info": info}


def _vertex(vid: int, name: str, op: str, kind: str, types: dict, outputs: list[str]) -> dict[str, Any]:
    label = op if kind == "op" else (name if len(name) <= 22 else name[:21] + "…")
    if kind != "op":
        label = f"{label} {types.get(name, ('', ''))[1]}".strip()
    return {"id": vid, "name": name, "op": op, "kind": kind, "label": label,
            "w": max(MIN_W, CHAR_W * len(label) + 18), "h": NODE_H,
            "outputs": [f"{o}: {types.get(o, ('?', '?'))[0]}[{types.get(o, ('?', '?'))[1]}]"
                        for o in outputs if o][:4]}


def _layout(verts: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, float]:
    """Longest-path layers, barycentric ordering, then placement under the predecessors.

    An edge spanning several layers gets a thin dummy vertex in each layer it crosses (the
    Sugiyama method), so it takes part in the ordering and is routed around the nodes; its
    bend points end up in ``edge["points"]``.
    """
    n = len(verts)
    fwd: list[list[int]] = [[] for _ in range(n)]
    back: list[list[int]] = [[] for _ in range(n)]
    for e in edges:
        back[e["t"]].append(e["s"])
        fwd[e["s"]].append(e["t"])
    layer = [0] * n
    for v in range(n):  # vertices are in topological order
        if back[v]:
            layer[v] = 1 + max(layer[p] for p in back[v])
    for v in range(n):  # sources sit just above their first consumer
        if not back[v] and fwd[v]:
            layer[v] = max(0, min(layer[s] for s in fwd[v]) - 1)
    width = [float(v["w"]) for v in verts]
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    chains: list[list[int]] = []
    for e in edges:
        chain = [e["s"]]
        for lay in range(layer[e["s"]] + 1, layer[e["t"]]):
            layer.append(lay)
            width.append(DUMMY_W)
            preds.append([])
            succs.append([])
            chain.append(len(layer) - 1)
        chain.append(e["t"])
        for a, b in zip(chain, chain[1:]):
            succs[a].append(b)
            preds[b].append(a)
        chains.append(chain)
    total = len(layer)
    depth = max(layer, default=0) + 1
    rows: list[list[int]] = [[] for _ in range(depth)]
    for v in range(total):
        rows[layer[v]].append(v)
    x = [0.0] * total

    def gap(u: int, v: int) -> float:
        return (width[u] + width[v]) / 2 + (NODE_GAP if u < n and v < n else DUMMY_GAP)

    def pack(row: list[int]) -> None:
        for k, v in enumerate(row):
            x[v] = x[row[k - 1]] + gap(row[k - 1], v) if k else 0.0
        mid = (x[row[0]] + x[row[-1]]) / 2 if row else 0.0
        for v in row:
            x[v] -= mid

    def bary(v: int, nbrs: list[list[int]]) -> float:
        ns = nbrs[v]
        return sum(x[u] for u in ns) / len(ns) if ns else x[v]

    for row in rows:
        pack(row)
    for _ in range(4):  # down and up sweeps
        for row in rows[1:]:
            row.sort(key=lambda v: bary(v, preds))
            pack(row)
        for row in reversed(rows[:-1]):
            row.sort(key=lambda v: bary(v, succs))
            pack(row)
    # final placement: each vertex at its predecessors' mean, pushed apart, the row re-centred
    for row in rows:
        want = [bary(v, preds) for v in row]
        pos: list[float] = []
        for k, v in enumerate(row):
            pos.append(max(want[k], pos[-1] + gap(row[k - 1], v)) if k else want[k])
        shift = sum(w - p for w, p in zip(want, pos)) / len(row) if row else 0.0
        for v, p in zip(row, pos):
            x[v] = p + shift
    step = NODE_H + LAYER_GAP
    for v in range(n):
        verts[v]["layer"] = layer[v]
        verts[v]["x"] = round(x[v], 1)
        verts[v]["y"] = layer[v] * step
    for e, chain in zip(edges, chains):
        if len(chain) > 2:
            e["points"] = [[round(x[d], 1), layer[d] * step] for d in chain[1:-1]]
    if not n:
        return {"min_x": 0.0, "max_x": 0.0, "min_y": 0.0, "max_y": 0.0, "layers": 0}
    return {"min_x": min(x[v] - width[v] / 2 for v in range(total)),
            "max_x": max(x[v] + width[v] / 2 for v in range(total)),
            "min_y": -NODE_H / 2, "max_y": (depth - 1) * step + NODE_H / 2, "layers": depth}
