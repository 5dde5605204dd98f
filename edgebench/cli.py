"""The ``edgebench`` command.

::

    edgebench info [--json]
    edgebench bench MODEL [--scenario S] [--qps N] [--duration S] [--backend B] [--json] ...
    edgebench zoo list | zoo export NAME PATH
    edgebench demo [--out report.html] [--duration S] [--models a,b]

Subcommands live in :data:`COMMANDS`, a registry of parser builders: each builder adds its
subparser and sets ``func`` to the function that runs it.  Heavy modules (torch,
onnxruntime, bokeh, pandas) are imported inside those functions, so ``edgebench --help``
stays fast.  Every :class:`~edgebench.errors.EdgebenchError` ends the command with one line
on stderr and exit status 2; ``EDGEBENCH_DEBUG=1`` shows tracebacks of unexpected errors.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

from ._registry import Registry
from .errors import EdgebenchError

__all__ = ["main", "build_parser", "COMMANDS", "text_table", "system_info", "versions"]

PROG = "edgebench"
SCENARIOS = ("single_stream", "multi_stream", "server", "offline")
_VERSIONS_OF = ("python", "edgebench", "numpy", "onnx", "onnxruntime", "torch")

#: subcommand name -> builder ``(subparsers) -> None``
COMMANDS: Registry[Callable[[Any], None]] = Registry("command")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = (),
               wrap_last: bool = False) -> str:
    """Rows as an aligned text table.

    Columns whose index is in ``right`` are right-aligned; with ``wrap_last`` the last column
    is wrapped to fit the terminal.
    """
    import shutil
    import textwrap

    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if wrap_last and headers:
        room = shutil.get_terminal_size((100, 24)).columns - sum(widths[:-1]) - 2 * (len(headers) - 1)
        widths[-1] = min(widths[-1], max(30, room))

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(vals, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    for r in cells:
        if not wrap_last or not r:
            out.append(line(r))
            continue
        last = textwrap.wrap(r[-1], widths[-1], break_on_hyphens=False) or [""]
        out.append(line([*r[:-1], last[0]]))
        out += [line([""] * (len(r) - 1) + [more]) for more in last[1:]]
    return "\n".join(out)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``edgebench: error: ... (see `edgebench bench --help`)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def _dump_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    return str(o)


def versions() -> dict[str, str]:
    """Versions of Python and the libraries edgebench runs on ("not installed" where absent).

    Read from package metadata, so nothing (torch included) is imported.
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in _VERSIONS_OF[1:]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def isa_summary(isa: Sequence[str]) -> dict[str, bool]:
    """Which of the ISA extensions that matter for inference the CPU flags show."""
    flags = {f.lower().replace("-", "_") for f in isa}
    return {
        "AVX2": "avx2" in flags,
        "AVX-512": any(f.startswith("avx512") for f in flags),
        "VNNI": any("vnni" in f for f in flags),
        "AMX": any(f.startswith("amx") for f in flags),
    }


def _yes(v: bool) -> str:
    return "yes" if v else "no"


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------
@COMMANDS.register("info")
def _build_info(sub: Any) -> None:
    p = sub.add_parser("info", help="devices, backends, CPU features and library versions",
                       description="Show the hardware and software edgebench sees on this machine.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


def system_info() -> dict[str, Any]:
    """What ``edgebench info --json`` prints: versions, CPU (ISA), devices and backends."""
    import dataclasses

    from . import devices as devices_mod
    from .backends import backends

    cpu = devices_mod.cpu_info()
    return {
        "versions": versions(),
        "cpu": {**dataclasses.asdict(cpu), "isa": list(cpu.isa), "features": isa_summary(cpu.isa)},
        "devices": [dataclasses.asdict(d) for d in devices_mod.devices()],
        "backends": [dataclasses.asdict(b) for b in backends()],
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = system_info()
    if args.json:
        _dump_json(info)
        return 0
    cpu = info["cpu"]
    print(f"CPU       {cpu['model']} ({cpu['vendor']}), {cpu['physical_cores']} physical / "
          f"{cpu['logical_cores']} logical cores")
    print("ISA       " + "  ".join(f"{k} {_yes(v)}" for k, v in cpu["features"].items()))
    print("flags     " + (" ".join(cpu["isa"]) or "(none detected)"))
    print()
    print("Devices")
    print(text_table(("name", "kind", "available", "model / reason"),
                     [(d["name"], d["kind"], _yes(d["available"]),
                       d["model"] if d["available"] else (d["reason"] or "")) for d in info["devices"]],
                     wrap_last=True))
    print()
    print("Backends")
    print(text_table(("name", "available", "version", "devices / reason"),
                     [(b["name"], _yes(b["available"]), b["version"] or "",
                       ", ".join(b["devices"]) if b["available"] else (b["reason"] or ""))
                      for b in info["backends"]], wrap_last=True))
    print()
    print("Versions  " + "  ".join(f"{k} {v}" for k, v in info["versions"].items()))
    return 0


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------
@COMMANDS.register("bench")
def _build_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark a model with a LoadGen-style scenario",
                       description="Benchmark MODEL (an ONNX/TorchScript path or zoo:NAME) on one "
                                   "backend and device.")
    p.add_argument("model", metavar="MODEL",
                   help="path to a model file, or zoo:NAME (see `edgebench zoo list`)")
    p.add_argument("--scenario", choices=SCENARIOS, default="single_stream")
    p.add_argument("--qps", type=_positive_float, default=None,
                   help="target queries per second (required by the server scenario)")
    p.add_argument("--latency-bound-ms", type=_positive_float, default=None, metavar="MS",
                   help="latency bound for validity: p99 for server (required) and multi_stream, "
                        "p90 for single_stream")
    p.add_argument("--duration", type=_positive_float, default=5.0, metavar="S",
                   help="measured seconds (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N")
    p.add_argument("--backend", default=None,
                   help="backend name (default: onnxruntime; see `edgebench info`)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="intra-op threads (default: the backend decides)")
    p.add_argument("--json", action="store_true", help="print the report summary as JSON (no progress bar)")
    p.set_defaults(func=cmd_bench)


def load_model_arg(spec: str) -> Any:
    """A model from a CLI argument: ``zoo:NAME`` or a path."""
    from .errors import ModelLoadError
    from .model import load

    if not spec.startswith("zoo:") and not os.path.exists(spec):
        raise ModelLoadError(f"no such model file: {spec}",
                             "give a path to an .onnx file or zoo:NAME (see `edgebench zoo list`)")
    return load(spec)


def check_bench_args(args: argparse.Namespace) -> None:
    """Refuse a server scenario without its rate or bound, before any model is built."""
    from .errors import BenchmarkError

    if args.scenario == "server" and args.qps is None:
        raise BenchmarkError("the server scenario needs a target rate", "pass --qps N")
    if args.scenario == "server" and args.latency_bound_ms is None:
        raise BenchmarkError("the server scenario needs a bound on p99 latency", "pass --latency-bound-ms MS")


def cmd_bench(args: argparse.Namespace) -> int:
    check_bench_args(args)
    import edgebench as eb

    model = load_model_arg(args.model)
    with eb.Engine(model, backend=args.backend, device=args.device, threads=args.threads) as engine:
        report = eb.benchmark(engine, args.scenario, qps=args.qps, latency_bound_ms=args.latency_bound_ms,
                              duration_s=args.duration, batch_size=args.batch_size, progress=not args.json)
    if args.json:
        _dump_json(report.summary())
        return 0
    from .model import _human_bytes

    s = report.summary()
    threads = "auto" if engine.threads is None else engine.threads
    setup = [f"{args.scenario}, {args.duration:g} s, batch {args.batch_size}"]
    if args.qps:
        setup.append(f"{args.qps:g} qps")
    if args.latency_bound_ms:
        setup.append(f"latency bound {args.latency_bound_ms:g} ms")
    rows = [
        ("model", f"{model.name} ({model.source}, {_human_bytes(model.size_bytes)})"),
        ("backend", f"{engine.backend} on {engine.device}, threads {threads}"),
        ("scenario", ", ".join(setup)),
        ("queries", f"{s['queries']} ({s['samples']} samples) in {s['duration_s'] or 0:.2f} s"),
        ("p50", f"{report.p50_ms:.3f} ms"),
        ("p90", f"{report.p90_ms:.3f} ms"),
        ("p99", f"{report.p99_ms:.3f} ms"),
        ("throughput", f"{report.throughput:,.1f} samples/s"),
        ("result", "VALID" if report.valid else "INVALID: " + "; ".join(report.validity_reasons)),
        ("stable", _yes(report.stable)),
        ("cpu", report.cpu),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0


# --------------------------------------------------------------------------------------------
# zoo
# --------------------------------------------------------------------------------------------
@COMMANDS.register("zoo")
def _build_zoo(sub: Any) -> None:
    p = sub.add_parser("zoo", help="built-in models: list, export",
                       description="The built-in models (built in code with PyTorch, cached as ONNX).")
    zsub = p.add_subparsers(dest="zoo_command", metavar="{list,export}", required=True)
    zl = zsub.add_parser("list", help="names, descriptions and inputs of the built-in models")
    zl.add_argument("--json", action="store_true")
    zl.set_defaults(func=cmd_zoo_list)
    ze = zsub.add_parser("export", help="write a built-in model as an .onnx file")
    ze.add_argument("name", metavar="NAME")
    ze.add_argument("path", metavar="PATH")
    ze.set_defaults(func=cmd_zoo_export)


def cmd_zoo_list(args: argparse.Namespace) -> int:
    from . import zoo

    entries = [zoo.info(n) for n in zoo.names()]
    if args.json:
        _dump_json([{"name": e.name, "description": e.description, "random_weights": e.random_weights,
                     "task": e.task, "inputs": [str(s) for s in e.inputs],
                     "outputs": [str(s) for s in e.outputs]} for e in entries])
        return 0
    print(text_table(("name", "random weights", "inputs", "description"),
                     [(e.name, _yes(e.random_weights), ", ".join(str(s) for s in e.inputs), e.description)
                      for e in entries], wrap_last=True))
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from . import zoo

    model = zoo.load(args.name)
    path = model.save(args.path)
    print(path)
    return 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------
@COMMANDS.register("demo")
def _build_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the tour: build the zoo, benchmark it on every backend, write a report",
                       description="Build the zoo models, benchmark each on every available backend "
                                   "(single_stream) and write a self-contained HTML report.")
    p.add_argument("--out", default="edgebench-report.html", metavar="PATH",
                   help="HTML report to write (default edgebench-report.html)")
    p.add_argument("--duration", type=_positive_float, default=1.5, metavar="S",
                   help="measured seconds per model and backend (default 1.5)")
    p.add_argument("--models", default=None, metavar="A,B",
                   help="comma-separated zoo models (default: all)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="intra-op threads of every engine (default: each backend decides)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    run_demo(models=models, duration_s=args.duration, out=args.out, threads=args.threads)
    return 0


# commands defined beside what they drive: name -> (module, builder); imported only when
# the parser is built (those modules import nothing heavy at the top)
_ELSEWHERE = {
    "dashboard": (".notebook.dashboard.server", "add_dashboard_command"),
    "serve": (".serve.cli", "add_serve_command"),
    "optimize": (".optimize.cli", "add_optimize_command"),
    "lab": (".notebook.lab", "add_lab_command"),
    "cluster": (".cluster.cli", "add_cluster_command"),
}


def _builder_from(module: str, func: str) -> Callable[[Any], None]:
    def build(sub: Any) -> None:
        from importlib import import_module

        getattr(import_module(module, __package__), func)(sub)

    return build


for _name, (_module, _func) in _ELSEWHERE.items():
    COMMANDS.register(_name, _builder_from(_module, _func))


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from . import __version__

    parser = _Parser(prog=PROG, description="edgebench: load, run and benchmark edge-AI "
                                                            "inference models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS.names():
        COMMANDS.get(name)(sub)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``edgebench`` command; returns the exit status (0 ok, 1 bug, 2 usage error, 130 ^C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, bad arguments (argparse prints them)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except EdgebenchError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `edgebench info | head`
        return 0
    except Exception as e:
        if os.environ.get("EDGEBENCH_DEBUG", "") not in ("", "0"):
            raise
        print(f"{PROG}: error: {type(e).__name__}: {_one_line(e)} "
              f"(run with EDGEBENCH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
