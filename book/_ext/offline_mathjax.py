"""Serve MathJax from the site itself, so the book shows its math without the internet.

MathJax 3 comes from the pinned PyPI package ``sphinx-mathjax-offline`` (its files only; its own Sphinx hook copies
after the build, which an incremental build can skip). Here the folder is added to the static path, so Sphinx copies
it into ``_static/mathjax`` on every build, and ``mathjax_path`` points there instead of a CDN.
"""

from importlib import metadata
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError


def _mathjax_static_dir() -> Path:
    dist = metadata.distribution("sphinx-mathjax-offline")
    static = Path(dist.locate_file("sphinx-mathjax-offline/static"))
    if not (static / "mathjax" / "tex-chtml.js").is_file():
        raise ExtensionError(f"MathJax not found at {static / 'mathjax'}; reinstall sphinx-mathjax-offline")
    return static


def _configure(app: Sphinx, config) -> None:
    config.html_static_path = list(config.html_static_path) + [str(_mathjax_static_dir())]
    config.mathjax_path = "mathjax/tex-chtml.js"


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _configure, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
