"""The labs that train a tokenizer train it on their training text only: the validation text leaks into no merge.

Each lab's own cells run (up to its token streams) with ``BPETokenizer.train`` recording the text it is given; the
test then checks what was learned from, not how the code is spelled: the training and validation streams decode to
the lab's text, in order and without overlap, and every text the tokenizer learned from lies inside the training part.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from IPython.core.inputtransformer2 import TransformerManager


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _run_cells_until(notebook: Path, names: set[str], namespace: dict) -> None:
    """Execute the notebook's code cells in order, in ``namespace``, until every name in ``names`` is defined."""
    transform = TransformerManager().transform_cell  # IPython's own translation of magics such as %pip
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "code":
            exec(compile(transform("".join(cell["source"])), f"{notebook.name} cell", "exec"), namespace)
        if names <= namespace.keys():
            return
    pytest.fail(f"{notebook.name} never defines {sorted(names - namespace.keys())}")


@pytest.mark.parametrize("notebook", ["ch04_pretrain.ipynb", "ch04_scaling.ipynb"])
def test_lab_trains_its_tokenizer_on_the_training_text_only(notebook, monkeypatch, tmp_path, tokenizer_training_texts):
    monkeypatch.setenv("LABKIT_PROFILE", "ci")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a lab's work folder goes under tmp_path
    space: dict = {"__name__": "__main__"}
    _run_cells_until(NOTEBOOKS / notebook, {"text", "tokenizer", "train_ids", "valid_ids"}, space)
    tokenizer = space["tokenizer"]
    train_text = tokenizer.decode(np.asarray(space["train_ids"]), errors="strict")  # what the model trains on
    valid_text = tokenizer.decode(np.asarray(space["valid_ids"]), errors="strict")  # what it is measured on

    assert train_text + valid_text == space["text"]  # the lab's text, split once: no gap, no overlap
    assert 0.05 < len(valid_text) / len(space["text"]) < 0.15  # the lab's tenth, not a sliver
    assert len(tokenizer_training_texts) == 1
    assert tokenizer_training_texts[0] in train_text  # the merges were learned from training text alone
