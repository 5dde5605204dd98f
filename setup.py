"""Build hook only; the project's metadata is in pyproject.toml.

The anywidget front-ends live in the top-level ``widgets/`` folder (ESM + CSS, no build
step).  Wheels ship them as ``edgebench/widgets/`` (the ``package-data`` entry in
pyproject.toml); this copies them there while building.  An editable install reads them from
``widgets/`` directly (see ``edgebench.notebook.graph_view.asset_path``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
WIDGETS = HERE / "widgets"
PATTERNS = ("*.js", "*.css")


class build_py_with_widgets(build_py):
    """``build_py`` that also copies ``widgets/*.js`` and ``widgets/*.css`` into ``edgebench/widgets/``."""

    def _widget_files(self) -> list[Path]:
        return sorted(p for pat in PATTERNS for p in WIDGETS.glob(pat))

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the package is served from the checkout
            return
        dest = Path(self.build_lib) / "edgebench" / "widgets"
        dest.mkdir(parents=True, exist_ok=True)
        for src in self._widget_files():
            shutil.copy2(src, dest / src.name)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        dest = Path(self.build_lib) / "edgebench" / "widgets"
        return super().get_outputs(include_bytecode) + [str(dest / p.name) for p in self._widget_files()]


setup(
    cmdclass={"build_py": build_py_with_widgets},
    # enables edgebench.notebook.server_ext (BokehJS served locally) in every Jupyter server
    data_files=[("etc/jupyter/jupyter_server_config.d",
                 ["jupyter-config/jupyter_server_config.d/edgebench.json"])],
)
