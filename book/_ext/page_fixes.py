"""Small fixes to every page of the site that the headless-browser tests (tests/test_browser.py) found.

1. Sphinx 7.4 lists a script that has only a body twice when an extension adds it after the builder started (once
   with the file name None, once with ''): sphinx-thebe's inline `const THEBE_JS_URL = ...` then runs twice and the
   second copy throws "Identifier 'THEBE_JS_URL' has already been declared" on every page. Keep the first copy.
2. On a reader's first visit the theme stores no colour mode, and pydata-sphinx-theme logs "Got invalid theme mode"
   as a console error before it falls back to "auto". Start from the theme's default mode instead.
3. Long inline code (a dotted call chain, a path) cannot wrap and pushes a phone-width page sideways: let it break;
   a table wider than the screen did the same: it scrolls in its own box.
"""

from pathlib import Path

from sphinx.application import Sphinx

STATIC = Path(__file__).parent / "page_fixes_static"
DEFAULT_MODE_JS = (
    "if (!document.documentElement.dataset.mode) "
    "document.documentElement.dataset.mode = document.documentElement.dataset.defaultMode || 'auto';"
)


def _static_path(app: Sphinx, config) -> None:
    config.html_static_path = list(config.html_static_path) + [str(STATIC)]


def _unique_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _static_path, priority=900)
    app.connect("html-page-context", _unique_scripts)
    app.add_js_file(None, body=DEFAULT_MODE_JS, priority=100)
    app.add_css_file("page_fixes.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
