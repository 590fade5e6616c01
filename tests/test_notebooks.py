"""Every notebook of the book, run top to bottom in the `ci` profile: each must finish with no error output.

The notebooks are executed once per test session, by the book build (the `built_book` fixture in tests/conftest.py,
scripts/build_book.py with a fresh cache), and this file checks what that execution left: one test per notebook,
which names the failing cell and shows its error. (Running the notebooks a second time through nbval would double
the suite's longest part; `pytest notebooks/NAME.ipynb` still runs one notebook through nbval while editing it.)
"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("build_book", REPO / "scripts" / "build_book.py")
build_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_book)
NOTEBOOKS = [str(path.relative_to(REPO)) for path in build_book.toc_notebooks()]

pytestmark = pytest.mark.slow


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """'cell N: Name: message' for every error output in ``nb``, with the end of its traceback."""
    found = []
    for number, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                tail = "\n".join(output.get("traceback", [])[-3:])
                found.append(f"cell {number}: {output.get('ename')}: {output.get('evalue')}\n{tail}")
    return found


def test_every_notebook_in_the_toc_is_checked():
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "notebooks").glob("*.ipynb")}
    assert on_disk == set(NOTEBOOKS), f"notebooks not in _toc.yml: {sorted(on_disk - set(NOTEBOOKS))}"


@pytest.mark.parametrize("rel", NOTEBOOKS)
def test_notebook_runs_top_to_bottom_in_the_ci_profile(built_book, rel):
    failed = built_book.root / "_build" / "failed" / rel
    if failed.exists():
        errors = error_outputs(nbformat.read(failed, as_version=4))
        pytest.fail(f"{rel} raised in the ci profile:\n" + ("\n".join(errors) or built_book.stderr[-3000:]))
    executed = built_book.root / "_build" / "executed" / rel
    assert executed.is_file(), f"{rel} was not executed by the build:\n{built_book.stderr[-3000:]}"
    nb = nbformat.read(executed, as_version=4)
    assert nb.metadata["labkit_build"]["profile"] == "ci"
    assert not error_outputs(nb), error_outputs(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), f"{rel}: a code cell did not run"
