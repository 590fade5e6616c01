"""The website: the build script's execution cache, and a real build of the book checked page by page."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_book", REPO / "scripts" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)


def _notebook(*code: str) -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_markdown_cell("a")] + [nbformat.v4.new_code_cell(src) for src in code]
    return nbformat.v4.new_notebook(cells=cells)


def test_labkit_closure_of_a_notebook_follows_imports_inside_labkit():
    nb = _notebook("import labkit\n%matplotlib inline", "from labkit.train import fit\nm = labkit.nn.MLP")
    modules = build_book.labkit_closure(nb)
    assert {"labkit", "labkit.train", "labkit.nn", "labkit.data", "labkit.profiles"} <= set(modules)
    assert "labkit.bigram" not in modules
    _, files = build_book.notebook_key(nb, "ci")
    assert {"labkit/__init__.py", "labkit/train.py", "labkit/profiles.py"} <= set(files)


def test_notebook_key_depends_on_code_and_profile_not_markdown():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("a"), nbformat.v4.new_code_cell("1 + 1")])
    key, _ = build_book.notebook_key(nb, "ci")
    nb.cells[0].source = "b"
    assert build_book.notebook_key(nb, "ci")[0] == key
    assert build_book.notebook_key(nb, "cpu")[0] != key
    nb.cells[1].source = "1 + 2"
    assert build_book.notebook_key(nb, "ci")[0] != key


def test_notebook_key_refuses_an_import_it_cannot_follow():
    with pytest.raises(ImportError, match=r"notebooks/x\.ipynb, line 2: labkit\.nothing is neither a module"):
        build_book.notebook_key(_notebook("import numpy\nfrom labkit import nothing"), "ci", origin="notebooks/x.ipynb")


def test_notebook_key_ignores_labkit_prose_but_not_labkit_code(tmp_path, monkeypatch):
    shutil.copytree(REPO / "labkit", tmp_path / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "requirements.txt", tmp_path / "requirements.txt")
    monkeypatch.setattr(build_book, "REPO", tmp_path)
    monkeypatch.setattr(build_book, "LABKIT", tmp_path / "labkit")
    nb = _notebook("from labkit import bigram")
    key, files = build_book.notebook_key(nb, "ci")
    assert "labkit/bigram.py" in files
    bigram = tmp_path / "labkit" / "bigram.py"
    source = bigram.read_text()
    bigram.write_text(source.replace('"""', '"""Edited prose. ', 1) + "\n# a comment\n")
    assert build_book.notebook_key(nb, "ci")[0] == key
    bigram.write_text(source + "\nEDITED = True\n")
    assert build_book.notebook_key(nb, "ci")[0] != key


def _build(root: Path, script: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(script), "--root", str(root)],
        capture_output=True, text=True, env={**__import__("os").environ, "LABKIT_PROFILE": "ci"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


class _Resources(HTMLParser):
    """Collects the URLs of scripts and stylesheets a page loads."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and "stylesheet" in (attrs.get("rel") or "") and attrs.get("href"):
            self.urls.append(attrs["href"])
        if tag == "link" and attrs.get("as") in ("script", "style", "font") and attrs.get("href"):
            self.urls.append(attrs["href"])


@pytest.mark.slow
def test_the_book_builds_offline_with_every_page(built_book):
    built_book.check()  # the session's one build (tests/conftest.py), also opened by tests/test_browser.py
    out = built_book.stdout
    html = built_book.html
    pages = build_book.toc_files(REPO / "_toc.yml")
    for page in pages:
        assert (html / f"{page}.html").is_file(), f"missing page {page}.html"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    math_pages = 0
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "Traceback (most recent call last)" not in text and 'class="output traceback' not in text, page
        assert "ansi-red-intense-fg" not in text or "Error" not in text, page
        parser = _Resources()
        parser.feed(text)
        external = [u for u in parser.urls if re.match(r"^(https?:)?//", u)]
        assert not external, f"{page.name} loads {external}"
        if 'class="math notranslate' in text:  # a page with math must load MathJax from the site
            math_pages += 1
            assert "_static/mathjax/tex-chtml.js" in text
    assert math_pages >= 2
    bibliography = (html / "book" / "references.html").read_text(encoding="utf-8")
    assert "Attention is all you need" in bibliography
    for notebook in build_book.toc_notebooks():
        assert f"{notebook.relative_to(REPO)}: executing" in out

    again = _build(built_book.root, REPO / "scripts" / "build_book.py")
    assert "0 notebook(s) executed" in again
    assert "executing" not in again


def _mini_project(root: Path) -> Path:
    """A copy of the build machinery with two tiny notebooks, one importing labkit.bigram and one labkit.nn."""
    for name in ["labkit", "scripts", "book"]:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "ch0*"))
    for name in ["_config.yml", "references.bib", "requirements.txt"]:
        shutil.copy(REPO / name, root / name)
    (root / "notebooks").mkdir()
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n  - file: notebooks/b\n"
        "  - file: book/references\n"
    )
    for name, module in [("a", "bigram"), ("b", "nn")]:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [
            nbformat.v4.new_markdown_cell(f"# Notebook {name}\n\nFirst version of the text."),
            nbformat.v4.new_code_cell(f"from labkit import {module}\nprint('{name} ran')"),
        ]
        nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    intro = root / "book" / "intro.md"
    intro.write_text("# Test book\n\nA page.\n")
    return root / "scripts" / "build_book.py"


@pytest.mark.slow
def test_editing_labkit_reruns_only_the_notebooks_that_import_it(tmp_path):
    project = tmp_path / "project"
    script = _mini_project(project)
    first = _build(project, script)
    assert "notebooks/a.ipynb: executing" in first and "notebooks/b.ipynb: executing" in first

    # Text only: nothing runs, yet the site shows the new text.
    nb_path = project / "notebooks" / "a.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[0].source = "# Notebook a\n\nSecond version of the text."
    nbformat.write(nb, nb_path)
    text_only = _build(project, script)
    assert "0 notebook(s) executed" in text_only
    page = (project / "_build" / "html" / "notebooks" / "a.html").read_text(encoding="utf-8")
    assert "Second version of the text." in page and "a ran" in page

    # A labkit module that only notebook a imports.
    # Prose only, in a module both import (labkit/__init__.py) and one only a imports: nothing runs.
    for name in ["__init__.py", "bigram.py"]:
        path = project / "labkit" / name
        source = path.read_text()
        path.write_text(source.replace('"""', '"""An edited docstring. ', 1) + "\n# an edited comment\n")
    prose_only = _build(project, script)
    assert "0 notebook(s) executed" in prose_only and "executing" not in prose_only

    # Code in a labkit module that only notebook a imports.
    with open(project / "labkit" / "bigram.py", "a") as f:
        f.write("\nEDITED = True\n")
    after_edit = _build(project, script)
    assert "notebooks/a.ipynb: executing" in after_edit
    assert "notebooks/b.ipynb: up to date" in after_edit
    executed = json.loads((project / "_build" / "executed" / "notebooks" / "a.ipynb").read_text())
    assert "labkit/bigram.py" in executed["metadata"]["labkit_build"]["labkit"]


@pytest.mark.slow
def test_a_failing_notebook_is_named_kept_and_the_others_still_run(tmp_path):
    project = tmp_path / "project"
    script = _mini_project(project)
    nb_path = project / "notebooks" / "a.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('planted failure')"))
    nbformat.write(nb, nb_path)
    result = subprocess.run([sys.executable, str(script), "--root", str(project)], capture_output=True, text=True,
                            env={**__import__("os").environ, "LABKIT_PROFILE": "ci"})
    assert result.returncode == 1
    assert "FAILED: notebooks/a.ipynb" in result.stderr and "planted failure" in result.stderr
    assert "1 notebook(s) failed: notebooks/a.ipynb" in result.stderr
    assert "notebooks/b.ipynb: done" in result.stdout  # the other notebook still ran
    kept = nbformat.read(project / "_build" / "failed" / "notebooks" / "a.ipynb", as_version=4)
    errors = [o for cell in kept.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert [e["evalue"] for e in errors] == ["planted failure"]
    assert "a ran" in kept.cells[1].outputs[0]["text"]  # outputs up to the error are kept
