"""``edgebench lab``: JupyterLab on the tutorials.

::

    edgebench lab [--port N] [--no-browser] [DIR]

Opens JupyterLab on DIR (default: the repository's ``notebooks/`` folder), bound to
127.0.0.1 only, with JupyterLab's news feed and update check off (nothing is fetched from
the internet).  Running as root adds ``--ServerApp.allow_root=True``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["add_lab_command", "cmd_lab", "lab_command", "tutorials_dir"]

def tutorials_dir() -> Path | None:
    """The repository's ``notebooks/`` folder, or ``None`` when edgebench is installed without it."""
    here = Path(__file__).resolve().parent.parent.parent / "notebooks"
    return here if here.is_dir() else None


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return v


def add_lab_command(subparsers: Any) -> None:
    """Add the ``lab`` subcommand to an argparse ``subparsers`` (a :data:`edgebench.cli.COMMANDS` builder)."""
    p = subparsers.add_parser("lab", help="open JupyterLab on the tutorials",
                              description="Open JupyterLab on DIR (default: the tutorials in the "
                                          "repository's notebooks/ folder), on 127.0.0.1 only.")
    p.add_argument("dir", nargs="?", default=None, metavar="DIR",
                   help="folder to open (default: the tutorials)")
    p.add_argument("--port", type=_port, default=None, metavar="N",
                   help="port (default: JupyterLab's, 8888 or the next free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser; print the URL")
    p.set_defaults(func=cmd_lab)


def lab_command(directory: str | os.PathLike | None = None, port: int | None = None,
                browser: bool = True) -> list[str]:
    """The ``jupyter lab`` command line that ``edgebench lab`` runs.

    Raises
    ------
    ConfigError
        ``directory`` is not a folder, the tutorials are not there, or JupyterLab is missing.
    """
    import importlib.util

    if directory is None:
        found = tutorials_dir()
        if found is None:
            raise ConfigError("the tutorials folder (notebooks/ of the edgebench repository) is not here: "
                           "edgebench was installed without it",
                           "pass the folder to open: edgebench lab DIR")
        folder = found
    else:
        folder = Path(directory).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"no such folder: {directory}", "pass a folder of notebooks: edgebench lab DIR")
    if importlib.util.find_spec("jupyterlab") is None:
        raise ConfigError("JupyterLab is not installed", "pip install 'edgebench[notebook]'")
    cmd = [sys.executable, "-m", "jupyterlab",
           "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.root_dir={folder}",
           "--LabApp.news_url=None",
           # BokehJS served by this Jupyter server (no CDN, no inlining in saved notebooks)
           "--ServerApp.jpserver_extensions={'edgebench.notebook.server_ext': True}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if port is not None:
        cmd.append(f"--ServerApp.port={port}")
    if not browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--ServerApp.allow_root=True")
    return cmd


def cmd_lab(args: argparse.Namespace) -> int:
    """Run JupyterLab until it stops; returns its exit status.

    On POSIX the process becomes JupyterLab (``os.execv``), so Ctrl-C, SIGTERM and the exit
    status are JupyterLab's own; elsewhere it runs as a child process.
    """
    cmd = lab_command(args.dir, port=args.port, browser=not args.no_browser)
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:  # JupyterLab got the ^C too and shut down
        return 130
