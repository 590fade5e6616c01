"""The project's own rules, checked: pinned requirements, clean notebooks, one repository URL."""

import re
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_every_requirement_is_pinned_exactly():
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    packages = [line for line in lines if line and not line.startswith("#")]
    assert len(packages) > 20
    unpinned = [line for line in packages if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[A-Za-z0-9_.+\-]+", line)]
    assert not unpinned


def test_notebooks_exist_are_in_the_toc_and_store_no_outputs():
    toc = (REPO / "_toc.yml").read_text()
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in toc, f"{path.name} is not in _toc.yml"
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} stores outputs"


def test_notebooks_follow_the_lab_layout():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path.name
        assert "../book/" in nb.cells[0].source, f"{path.name}: first cell should link to its book section"
        code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
        assert "google.colab" in code[0] and "import labkit" in code[0], f"{path.name}: first code cell"
        assert "labkit.get_profile()" in code[1], f"{path.name}: second code cell must be the config cell"


def test_colab_install_line_uses_the_configured_repository():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    url = config["repository"]["url"].rstrip("/")
    for path in NOTEBOOKS:
        first_code = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert f'"labkit @ git+{url}"' in first_code.source, path.name


def test_launch_buttons_are_configured():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    buttons = config["launch_buttons"]
    assert buttons["colab_url"] and buttons["binderhub_url"] and buttons["jupyterhub_url"]
    assert config["execute"]["execute_notebooks"] == "off"  # scripts/build_book.py executes them


def test_no_text_holds_control_characters():
    # A notebook written by a script with "\text" or "\frac" in a normal string gets a tab or a form feed instead of
    # the LaTeX command, and the formula silently renders wrong.
    sources = [*NOTEBOOKS, *(REPO / "course" / "source").glob("*/*.ipynb")]
    texts = {path: "".join(cell.source for cell in nbformat.read(path, as_version=4).cells) for path in sources}
    texts |= {path: path.read_text(encoding="utf-8") for path in (REPO / "book").glob("*.md")}
    for path, text in texts.items():
        bad = sorted({hex(ord(c)) for c in text if ord(c) < 32 and c != "\n"})
        assert not bad, f"{path.relative_to(REPO)} holds control characters {bad} (an unescaped backslash?)"


def test_subprocesses_import_this_checkouts_labkit(tmp_path):
    """Kernels, nbgrader and the book build are subprocesses: they must import the labkit of the checkout under
    test (conftest.py puts it first on PYTHONPATH), not whichever checkout the editable install points at."""
    import subprocess
    import sys

    probe = ("import sys, labkit; print(labkit.__file__); print(sys.path.index(sys.argv[1])); "
             "print(min([i for i, p in enumerate(sys.path) if 'site-packages' in p] or [len(sys.path)]))")
    result = subprocess.run([sys.executable, "-c", probe, str(REPO)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    where, checkout, site = result.stdout.split()
    assert Path(where).resolve() == (REPO / "labkit" / "__init__.py").resolve()
    assert int(checkout) < int(site), "the checkout must come before site-packages on the subprocess's path"
