"""Bokeh figure builders shared by the notebook views, the HTML report and the dashboards.

Each builder takes plain numbers (numpy arrays, a DataFrame, a dict) and returns a Bokeh
figure; live ones take the ``ColumnDataSource`` they draw so the caller can ``stream`` into
it.  Bokeh is imported inside the functions: importing this module costs nothing.

The op-type colours (:func:`op_color`) are shared with the graph view, so a ``Conv`` has the
same colour in the per-operator bars and in the drawn graph.
"""
from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["PALETTE", "op_color", "latency_histogram", "latency_timeline", "percentile_bars",
           "operator_bars", "op_count_bars", "live_latency_figure", "live_rate_figure"]

#: Category10: one colour per run / series.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_TOOLS = "save,reset,box_zoom,wheel_zoom,pan"

# op families: the same family, the same colour, in every view
_FAMILIES = {
    "#4e79a7": ("Conv", "ConvTranspose", "FusedConv", "QLinearConv", "ConvInteger"),
    "#2b5f8f": ("MatMul", "Gemm", "FusedGemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul",
                "MatMulNBits", "Attention", "MultiHeadAttention"),
    "#59a14f": ("Relu", "Clip", "Sigmoid", "Tanh", "Gelu", "BiasGelu", "FastGelu", "LeakyRelu",
                "HardSigmoid", "HardSwish", "Softplus", "Elu", "Selu", "Erf", "PRelu", "Mish"),
    "#b07aa1": ("LayerNormalization", "SkipLayerNormalization", "BatchNormalization",
                "InstanceNormalization", "GroupNormalization", "Softmax", "LogSoftmax",
                "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"),
    "#f28e2b": ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Where",
                "Sum", "Max", "Min", "Equal", "Less", "Greater", "Not", "And", "Or"),
    "#e15759": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
                "ReduceSum", "ReduceMax", "ReduceMin", "ArgMax", "TopK", "LpPool"),
    "#9c755f": ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split",
                "Slice", "Gather", "GatherElements", "Expand", "Tile", "Pad", "Resize", "Cast",
                "Identity", "ReorderInput", "ReorderOutput", "DepthToSpace", "SpaceToDepth"),
    "#bab0ac": ("Shape", "Size", "Constant", "ConstantOfShape", "Range"),
    "#76b7b2": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
}
_OP_COLORS = {op: colour for colour, ops in _FAMILIES.items() for op in ops}
_OTHER = ("#edc948", "#ff9da7", "#86bcb6", "#d37295", "#a0cbe8", "#ffbe7d", "#8cd17d", "#f1ce63")


def op_color(op_type: str) -> str:
    """A stable colour for an operator type (the same in every process)."""
    c = _OP_COLORS.get(op_type)
    if c is None:
        c = _OTHER[zlib.crc32(op_type.encode()) % len(_OTHER)]
    return c


def _fmt(v: float, spec: str = ".3f") -> str:
    return "" if v is None or not math.isfinite(v) else format(v, spec)


def _log_scale(values: Sequence[np.ndarray]) -> bool:
    """A log axis when the positive values span more than 20x (an MLP next to a BERT)."""
    pos = [v[v > 0] for v in values]
    pos = [p for p in pos if len(p)]
    return bool(pos) and max(float(p.max()) for p in pos) > 20 * min(float(p.min()) for p in pos)


# --------------------------------------------------------------------------------------------
# static figures
# --------------------------------------------------------------------------------------------
def latency_histogram(latency_ms: Any, *, title: str = "Latency distribution", color: str = PALETTE[0],
                      bins: int = 50, width: int = 360, height: int = 230, **figure_kw: Any) -> Any:
    """Queries per latency bin; the slowest 0.1% are folded into the last bin.

    Parameters
    ----------
    latency_ms
        Latencies in milliseconds (an empty array gives an empty figure).
    title, color, bins, width, height
        Looks.  Extra keywords go to ``bokeh.plotting.figure``.
    """
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    fig = figure(height=height, width=width, title=title, x_axis_label="latency (ms)",
                 y_axis_label="queries", tools=_TOOLS, **figure_kw)
    lat = np.asarray(latency_ms, dtype=float)
    lat = lat[np.isfinite(lat)]
    if len(lat):
        hi = np.percentile(lat, 99.9)
        counts, edges = np.histogram(np.clip(lat, None, hi), bins=bins)
        src = ColumnDataSource({"top": counts, "left": edges[:-1], "right": edges[1:]}, name="histogram")
        fig.quad(top="top", bottom=0, left="left", right="right", source=src, fill_color=color,
                 line_color="white", alpha=0.85)
        fig.add_tools(HoverTool(tooltips=[("from", "@left{0.000} ms"), ("to", "@right{0.000} ms"),
                                          ("queries", "@top")]))
    fig.y_range.start = 0
    return fig


def latency_timeline(series: Sequence[tuple[str, Any, Any]], *, max_points: int = 4000,
                     title: str = "Latency over time", height: int = 340, legend: bool = True,
                     **figure_kw: Any) -> Any:
    """Each query's latency against its completion time, one colour per series.

    Parameters
    ----------
    series
        ``(label, t_s, latency_ms)`` per run: seconds into the run and milliseconds.
    max_points
        Per series; longer series are thinned evenly (the histogram shows them all).
    legend
        Show a legend (click an entry to hide its series).
    """
    from bokeh.plotting import figure

    log = _log_scale([np.asarray(s[2], dtype=float) for s in series])
    figure_kw.setdefault("sizing_mode", "stretch_width")
    fig = figure(height=height, title=title, x_axis_label="seconds into the run",
                 y_axis_label="latency (ms)", y_axis_type="log" if log else "linear",
                 tools=_TOOLS, **figure_kw)
    for i, (label, t, lat) in enumerate(series):
        t, lat = np.asarray(t, dtype=float), np.asarray(lat, dtype=float)
        if not len(lat):
            continue
        step = max(1, len(lat) // max_points)
        t, lat = t[::step], lat[::step]
        if log:
            t, lat = t[lat > 0], lat[lat > 0]
        kw = {"legend_label": label} if legend else {}
        fig.scatter(t, lat, size=3, alpha=0.6, color=PALETTE[i % len(PALETTE)], **kw)
    if legend and fig.legend:
        fig.legend.click_policy = "hide"
        fig.legend.location = "top_right"
    return fig


def percentile_bars(labels: Sequence[str], p50_ms: Sequence[float], p99_ms: Sequence[float], *,
                    height: int = 340, title: str = "Latency percentiles per run (ms)") -> Any:
    """p50 and p99 bars per run, on a log axis when the runs differ by orders of magnitude."""
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap

    factors = [(lab, stat) for lab in labels for stat in ("p50", "p99")]
    values = [float(v) for pair in zip(p50_ms, p99_ms) for v in pair]
    finite = [v for v in values if math.isfinite(v) and v > 0]
    log = bool(finite) and max(finite) > 20 * min(finite)
    floor = 10 ** np.floor(np.log10(min(finite) / 2)) if log else 0.0
    fig = figure(x_range=FactorRange(*factors), height=height, sizing_mode="stretch_width",
                 title=title + (", log scale" if log else ""), y_axis_label="ms",
                 y_axis_type="log" if log else "linear", toolbar_location="right", tools="save,reset")
    src = ColumnDataSource({"x": factors, "ms": values, "text": [_fmt(v) for v in values]})
    fig.vbar(x="x", top="ms", bottom=floor, width=0.85, source=src, line_color="white",
             fill_color=factor_cmap("x", palette=[PALETTE[0], PALETTE[3]], factors=["p50", "p99"],
                                    start=1, end=2))
    fig.text(x="x", y="ms", text="text", source=src, text_align="center", text_baseline="bottom",
             text_font_size="9pt", y_offset=-2)
    fig.add_tools(HoverTool(tooltips=[("run", "@x"), ("latency", "@ms{0.000} ms")]))
    fig.xaxis.major_label_orientation = 0.9
    if not log:
        fig.y_range.start = 0
    fig.y_range.range_padding = 0.15
    return fig


def operator_bars(ops: "pd.DataFrame", *, top: int = 20, height: int | None = None,
                  title: str | None = None) -> Any:
    """Horizontal bars of the ``top`` operators by total time, coloured by op type.

    ``ops`` has the columns of :meth:`ProfileSession.operators`: ``op, type, calls,
    total_ms, mean_ms, share``.
    """
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    df = ops.sort_values("total_ms", ascending=False, kind="stable").head(top)
    names = [_short(str(n)) for n in df["op"]][::-1]  # slowest on top
    # distinct node names can shorten to the same text: keep factors unique
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} #{seen[n]}"
    src = ColumnDataSource({
        "op": names, "node": list(df["op"])[::-1], "type": list(df["type"])[::-1],
        "total_ms": list(df["total_ms"])[::-1], "mean_ms": list(df["mean_ms"])[::-1],
        "calls": list(df["calls"])[::-1], "share": [100 * s for s in df["share"]][::-1],
        "color": [op_color(str(t)) for t in df["type"]][::-1],
    }, name="operators")
    fig = figure(y_range=names, height=height or max(160, 22 * len(names) + 70),
                 sizing_mode="stretch_width", x_axis_label="total ms",
                 title=title or f"Top {len(names)} operators by time", tools="save,reset",
                 toolbar_location="right")
    fig.hbar(y="op", right="total_ms", height=0.8, color="color", source=src, legend_field="type")
    fig.add_tools(HoverTool(tooltips=[("node", "@node"), ("type", "@type"), ("total", "@total_ms{0.000} ms"),
                                      ("mean", "@mean_ms{0.0000} ms"), ("calls", "@calls"),
                                      ("share", "@share{0.0}%")]))
    fig.x_range.start = 0
    if fig.legend:
        fig.legend.location = "bottom_right"
        fig.legend.label_text_font_size = "8pt"
    return fig


def op_count_bars(op_counts: Mapping[str, int], *, top: int = 25, height: int | None = None) -> Any:
    """How many nodes of each op type a model has (the ``top`` most common)."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    items = sorted(op_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top][::-1]
    src = ColumnDataSource({"op": [k for k, _ in items], "count": [v for _, v in items],
                            "color": [op_color(k) for k, _ in items]}, name="op_counts")
    fig = figure(y_range=[k for k, _ in items], height=height or max(140, 20 * len(items) + 60),
                 sizing_mode="stretch_width", x_axis_label="nodes", title="Operators by type",
                 tools="save,reset", toolbar_location="right")
    fig.hbar(y="op", right="count", height=0.8, color="color", source=src)
    fig.add_tools(HoverTool(tooltips=[("op", "@op"), ("nodes", "@count")]))
    fig.x_range.start = 0
    return fig


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


# --------------------------------------------------------------------------------------------
# live figures (the caller streams into the sources)
# --------------------------------------------------------------------------------------------
def live_latency_figure(points: Any, ticks: Any, *, window_s: float = 120.0, height: int = 230) -> Any:
    """Per-request latency (dots) and the rolling p50 / p99 (lines) on a wall-clock axis.

    Parameters
    ----------
    points
        ``ColumnDataSource`` with columns ``t`` (ms since the epoch) and ``latency_ms``.
    ticks
        ``ColumnDataSource`` with ``t, p50_ms, p99_ms, rate`` (one row per update).
    window_s
        The x axis follows the newest data over this many seconds.
    """
    from bokeh.models import DataRange1d, HoverTool
    from bokeh.plotting import figure

    x_range = DataRange1d(follow="end", follow_interval=window_s * 1000, range_padding=0)
    fig = figure(height=height, sizing_mode="stretch_width", x_axis_type="datetime", x_range=x_range,
                 title="Latency (ms): requests, rolling p50 and p99", y_axis_label="ms", tools=_TOOLS,
                 toolbar_location="right")
    fig.scatter("t", "latency_ms", source=points, size=3, alpha=0.5, color=PALETTE[0])
    fig.line("t", "p50_ms", source=ticks, color=PALETTE[2], line_width=2, legend_label="p50")
    fig.line("t", "p99_ms", source=ticks, color=PALETTE[3], line_width=2, legend_label="p99")
    fig.add_tools(HoverTool(tooltips=[("latency", "@latency_ms{0.000} ms")], mode="mouse"))
    fig.legend.location = "top_left"
    fig.y_range.start = 0
    return fig


def live_rate_figure(ticks: Any, x_range: Any = None, *, height: int = 150) -> Any:
    """Requests per second (rolling) from the ``ticks`` source of :func:`live_latency_figure`."""
    from bokeh.plotting import figure

    kw = {"x_range": x_range} if x_range is not None else {}
    fig = figure(height=height, sizing_mode="stretch_width", x_axis_type="datetime",
                 title="Requests per second", tools="save,reset", toolbar_location="right", **kw)
    fig.line("t", "rate", source=ticks, color=PALETTE[1], line_width=2)
    fig.y_range.start = 0
    return fig
