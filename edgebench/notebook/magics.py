"""The IPython extension: ``%load_ext edgebench``.

::

    %edgebench info [--json]                   devices, backends, CPU features, versions
    %edgebench bench MODEL [options]           a LoadGen scenario; the options of `edgebench bench`
    %%edgebench profile [ENGINE ...] [-o VAR]  profile the inference calls the cell makes

``%edgebench bench`` shows the engine's live view while it runs (with a ``tqdm.auto``
progress bar), then the report.  ``%%edgebench profile`` turns :func:`edgebench.profile` on
for every live engine (or the engines named) while the cell runs, then shows the profile of
each engine that served requests, and hands it to the profiling dashboard's operator view.

Bad arguments, and every :class:`~edgebench.errors.EdgebenchError`, end the magic with one
line (``UsageError: ...``), no traceback.  The argument parsers are the CLI's own
(:data:`edgebench.cli.COMMANDS`), so the options cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ..errors import EdgebenchError

__all__ = ["EdgebenchMagics", "build_parser", "load_ipython_extension"]

PROG = "%edgebench"


class _HelpShown(Exception):
    """argparse printed ``--help`` and wants to exit."""


class _MagicParser(argparse.ArgumentParser):
    """argparse whose errors are one-line :class:`UsageError` s and whose ``exit`` returns."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError((message or "").strip() or f"{self.prog} failed")
        if message:
            print(message, end="")
        raise _HelpShown


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``%edgebench`` magic: ``info`` and ``bench`` from the CLI, plus ``profile``."""
    from .. import cli

    parser = _MagicParser(prog=PROG, description="edgebench in IPython: info, bench (line magics), "
                                                 "profile (cell magic).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in ("info", "bench"):
        cli.COMMANDS.get(name)(sub)
    p = sub.add_parser("profile", help="(cell magic) profile the inference calls made in the cell",
                       description="Profile every live engine (or the ENGINE variables named) while "
                                   "the cell runs; show the profile of each engine that served requests.")
    p.add_argument("engines", nargs="*", metavar="ENGINE",
                   help="names of Engine variables (default: every live engine)")
    p.add_argument("--no-operators", action="store_true",
                   help="request timings only: leave the backend's operator profiler off")
    p.add_argument("-o", "--out", metavar="VAR", default=None,
                   help="store the profile in VAR (a list when several engines served requests)")
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@magics_class
class EdgebenchMagics(Magics):
    """``%edgebench`` (line) and ``%%edgebench`` (cell)."""

    @line_cell_magic
    def edgebench(self, line: str, cell: str | None = None) -> None:
        """edgebench in IPython.

        ::

            %edgebench info [--json]
            %edgebench bench MODEL [--scenario S] [--qps N] [--duration S] [--backend B] ...
            %%edgebench profile [ENGINE ...] [--no-operators] [-o VAR]

        ``%edgebench --help`` and ``%edgebench bench --help`` list every option.
        """
        try:
            argv = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"cannot parse the arguments: {e}") from None
        try:
            args = build_parser().parse_args(argv)
        except _HelpShown:
            return
        runners: dict[str, Callable[[argparse.Namespace, str | None], None]] = {
            "info": self._info, "bench": self._bench, "profile": self._profile}
        if args.command == "profile" and cell is None:
            raise UsageError("profile is a cell magic: start the cell with `%%edgebench profile`")
        if args.command != "profile" and cell is not None:
            raise UsageError(f"{args.command} is a line magic: use `%edgebench {args.command} ...`")
        try:
            runners[args.command](args, cell)
        except EdgebenchError as e:
            raise UsageError(_one_line(e)) from None

    # -- info -----------------------------------------------------------------------------------
    def _info(self, args: argparse.Namespace, cell: str | None) -> None:
        from ..cli import cmd_info

        cmd_info(args)

    # -- bench ----------------------------------------------------------------------------------
    def _bench(self, args: argparse.Namespace, cell: str | None) -> None:
        from IPython.display import display

        import edgebench as eb

        from ..cli import check_bench_args, load_model_arg

        check_bench_args(args)
        model = load_model_arg(args.model)
        with eb.Engine(model, backend=args.backend, device=args.device, threads=args.threads) as engine:
            if not args.json:
                display(engine)  # the live view: request rate and latency grow while it runs
            report = eb.benchmark(engine, args.scenario, qps=args.qps, latency_bound_ms=args.latency_bound_ms,
                                  duration_s=args.duration, batch_size=args.batch_size,
                                  progress=not args.json)
        if args.json:
            print(json.dumps(report.summary(), indent=2))
        else:
            display(report)

    # -- profile --------------------------------------------------------------------------------
    def _engines(self, names: list[str]) -> list[Any]:
        from ..engine import Engine
        from ..profile import telemetry

        ns = self.shell.user_ns
        if names:
            out = []
            for n in names:
                if n not in ns:
                    raise UsageError(f"no variable named {n!r}: name the Engine variables to profile")
                if not isinstance(ns[n], Engine):
                    raise UsageError(f"{n!r} is a {type(ns[n]).__name__}, not an edgebench Engine")
                if getattr(ns[n], "_closed", False):
                    raise UsageError(f"engine {n!r} is closed: create a new one")
                out.append(ns[n])
            return list({id(e): e for e in out}.values())
        live = [o for o in telemetry.tracked() if isinstance(o, Engine)]
        live += [v for v in list(ns.values()) if isinstance(v, Engine) and not getattr(v, "_closed", False)]
        return list({id(e): e for e in live}.values())

    def _profile(self, args: argparse.Namespace, cell: str | None) -> None:
        from IPython.display import display

        from ..engine import Engine
        from ..errors import BenchmarkError
        from ..profile import telemetry
        from ..profile.profiler import profile

        engines = self._engines(args.engines)
        before = {id(e) for e in telemetry.tracked()}
        sessions = []
        with ExitStack() as stack:
            for eng in engines:
                try:
                    sessions.append(stack.enter_context(profile(eng, operators=not args.no_operators)))
                except BenchmarkError:  # already inside an eb.profile block
                    if args.engines:
                        raise
                    print(f"engine {eng.model.name!r} is already being profiled: skipped")
            result = self.shell.run_cell(cell, store_history=False)
        if not result.success:
            raise UsageError("the cell failed (see above); no profile shown")
        ran = [s for s in sessions if s.summary()["count"] > 0]
        new = [o for o in telemetry.tracked()
               if isinstance(o, Engine) and id(o) not in before and o.records.total]
        for eng in new:
            print(f"engine {eng.model.name!r} was created inside the cell, so it was not profiled: "
                  "create engines in an earlier cell")
        if not ran:
            if not new:
                print("no engine served a request in this cell: nothing to profile")
            return
        try:
            from .dashboard import publish_profile
        except ImportError:  # pragma: no cover - the dashboard needs bokeh only when drawn
            publish_profile = None
        for s in ran:
            if publish_profile is not None:
                publish_profile(s)
            display(s)
        if args.out:
            self.shell.user_ns[args.out] = ran[0] if len(ran) == 1 else ran


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%edgebench`` magics (``%load_ext edgebench``)."""
    ipython.register_magics(EdgebenchMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext edgebench``: nothing to undo beyond IPython's own bookkeeping."""
