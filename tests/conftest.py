"""Fixtures shared by the test files: one `ci`-profile build of the whole book per test run, and a recorder of
what the BPE tokenizer is trained on (the guard against validation text leaking into the vocabulary).

That build is the one execution of every notebook in the test run: tests/test_notebooks.py checks each executed
notebook, tests/test_book.py checks the website and its cache, and tests/test_browser.py opens the same site in a
browser, so the notebooks run once per session, not once per file.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from labkit.bpe import BPETokenizer

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuiltBook:
    """A fresh build of the book: the build root, its website folder, the script's exit status and what it printed."""

    root: Path
    html: Path
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> None:
        """Fail the calling test, with the end of the build's output, unless the build succeeded."""
        assert self.returncode == 0, self.stdout[-3000:] + self.stderr[-5000:]


def run_build(root: Path, script: Path = REPO / "scripts" / "build_book.py") -> subprocess.CompletedProcess:
    """Run the build script (ci profile) with ``--root root`` and return what happened."""
    return subprocess.run(
        [sys.executable, str(script), "--root", str(root)],
        capture_output=True, text=True, env={**os.environ, "LABKIT_PROFILE": "ci"},
    )


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> BuiltBook:
    """The book built from nothing into a session temp folder (minutes: it executes every notebook).

    A failed build is returned, not raised, so that each notebook's test can name its own failure; tests that need
    the website call ``built_book.check()`` first.
    """
    root = tmp_path_factory.mktemp("book")
    result = run_build(root)
    return BuiltBook(root=root, html=root / "_build" / "html", returncode=result.returncode, stdout=result.stdout,
                     stderr=result.stderr)


@pytest.fixture
def tokenizer_training_texts(monkeypatch):
    """Every text given to ``BPETokenizer.train`` while the fixture is active, in order."""
    texts, train = [], BPETokenizer.train.__func__

    def recording(cls, text, *args, **kwargs):
        texts.append(text)
        return train(cls, text, *args, **kwargs)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(recording))
    return texts
