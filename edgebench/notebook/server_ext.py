"""A Jupyter server extension that serves BokehJS from bokeh's own static folder.

Notebooks then load BokehJS from the Jupyter server they run on (``{base_url}edgebench/
bokehjs/js/bokeh.min.js``) instead of carrying 1.3 MB of it inline in every saved notebook,
and never from a CDN.  pip installs ``jupyter-config/jupyter_server_config.d/edgebench.json``,
which enables the extension for every Jupyter server of the environment; by hand:
``jupyter server extension enable edgebench.notebook.server_ext``.
"""
from __future__ import annotations

from typing import Any

ROUTE = "edgebench/bokehjs"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "edgebench.notebook.server_ext"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from bokeh.util.paths import bokehjs_path
    from jupyter_server.base.handlers import FileFindHandler
    from jupyter_server.utils import url_path_join

    web_app = serverapp.web_app
    pattern = url_path_join(web_app.settings["base_url"], ROUTE, "(.*)")
    # FileFindHandler: Jupyter's own static handler (caching headers, no directory listing)
    web_app.add_handlers(".*$", [(pattern, FileFindHandler, {"path": [str(bokehjs_path())]})])
    serverapp.log.info("edgebench: serving BokehJS at %s", pattern)


# the classic name, for older jupyter_server
load_jupyter_server_extension = _load_jupyter_server_extension


def install(prefix: str | None = None) -> str:
    """Enable the extension for the Jupyter servers of ``prefix`` (default: this environment).

    Wheels do this through their data files; an editable install (``pip install -e``) does
    not install data files, so ``make install`` calls this.  Returns the config file written.
    """
    import json
    import os
    import sys

    folder = os.path.join(prefix or sys.prefix, "etc", "jupyter", "jupyter_server_config.d")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "edgebench.json")
    with open(path, "w") as f:
        json.dump({"ServerApp": {"jpserver_extensions": {"edgebench.notebook.server_ext": True}}}, f, indent=2)
    return path


if __name__ == "__main__":
    print(f"edgebench: enabled the BokehJS server extension in {install()}")
