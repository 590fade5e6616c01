"""What a run trains on is what the book counts: tokens per step from one source, and the learning-rate schedule
against the book's formula (issues 11 and 21)."""

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import lm, optim
from labkit.gpt import GPT, GPTConfig
from labkit.optim import TrainConfig
from labkit.profiles import PROFILE_NAMES
from labkit.tokens import TokenWindows
from labkit.train import fit

ROOT = Path(__file__).resolve().parents[1]
CORPUS = np.tile(np.arange(40, dtype=np.uint16), 30)


def _tiny(config: TrainConfig) -> TrainConfig:
    """The profile's recipe at tiny size: every count that decides the tokens per step kept but B and T."""
    return dataclasses.replace(config, steps=3, batch_size=2, seq_len=8, warmup_steps=1, eval_every=3,
                               eval_batches=1, checkpoint_every=None)


SGD = optax.sgd(0.1)  # one transformation for every profile: the compiled step is reused (the test counts tokens)


def _trained_tokens(config: TrainConfig) -> int:
    model = GPT(GPTConfig.ci(vocab_size=64, max_len=8, num_layers=1, num_heads=1, width=8, mlp_width=16),
                rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, SGD, wrt=nnx.Param)
    history = fit(model, optimizer, lm.loss, TokenWindows(CORPUS, seq_len=config.seq_len), key=jax.random.key(0),
                  progress=False, **config.fit_kwargs())
    assert history.step == list(range(1, config.steps + 1))
    return history.tokens[-1]


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_tokens_trained_equal_tokens_counted_on_every_profile(profile):
    full = TrainConfig.for_profile(profile)
    # at full size, by arithmetic: what fit is told equals what the config counts
    kwargs = full.fit_kwargs()
    assert kwargs["accumulation"] * kwargs["batch_size"] * full.seq_len == full.tokens_per_step
    assert kwargs["steps"] * full.tokens_per_step == full.total_tokens
    # at tiny size, trained on a CPU: the preset's accumulation (8 on gpu and tpu) goes through to fit
    tiny = _tiny(full)
    assert tiny.accumulation == full.accumulation
    assert _trained_tokens(tiny) == tiny.total_tokens == 3 * full.accumulation * 2 * 8


def test_schedule_is_the_books_formula_with_s_the_updates_already_made():
    config = TrainConfig.ci(steps=50, warmup_steps=8, learning_rate=2e-3, final_learning_rate=2e-4)
    lr = optim.make_schedule(config)
    peak, final, w, total = 2e-3, 2e-4, 8, 50
    for s in range(w, total + 1):  # the book's cosine, for s_w <= s <= S
        book = final + 0.5 * (peak - final) * (1 + math.cos(math.pi * (s - w) / (total - w)))
        assert float(lr(s)) == pytest.approx(book, rel=1e-6)
    for s in range(w):  # linear warm-up: update s + 1 of the run has lr_max (s + 1) / W, never 0
        assert float(lr(s)) == pytest.approx(peak * (s + 1) / w, rel=1e-6)
    assert float(lr(0)) == pytest.approx(peak / w) and float(lr(0)) > 0


def test_optax_calls_the_schedule_with_the_updates_already_made():
    # an optimizer's first update uses schedule(0): the parameter moves by lr(0) = lr_max / W under plain SGD
    config = TrainConfig.ci(steps=20, warmup_steps=4, learning_rate=1.0, final_learning_rate=0.1)
    tx = optax.sgd(optim.make_schedule(config))
    params = np.zeros(1, np.float32)
    state = tx.init(params)
    moves = []
    for _ in range(6):
        updates, state = tx.update(np.ones(1, np.float32), state, params)
        moves.append(-float(updates[0]))
    assert moves[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and moves[4] == pytest.approx(1.0)


def _cells(name: str) -> list[str]:
    notebook = json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def _cell_with(cells: list[str], text: str) -> str:
    found = [c for c in cells if text in c]
    assert len(found) == 1, f"expected one code cell with {text!r}; found {len(found)}"
    return found[0]


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_scaling_notebook_trains_the_tokens_it_counts_on_every_profile(profile, monkeypatch):
    """The lab's own cells: its config (every profile's settings), its count of tokens, its train function; the
    training at tiny size on a CPU, with the profile's accumulation kept."""
    monkeypatch.setenv("LABKIT_PROFILE", profile)
    cells = _cells("ch04_scaling.ipynb")
    imports = "\n".join(line for line in cells[0].splitlines() if "%pip" not in line and "google.colab" not in line)
    space: dict = {}
    exec(imports, space)
    exec(_cell_with(cells, "TRAIN = TrainConfig.for_profile"), space)
    full = space["TRAIN"]
    space["TRAIN"] = _tiny(full)
    space["train_ids"] = space["valid_ids"] = CORPUS
    exec(_cell_with(cells, "tokens_per_run = "), space)  # the counting cell, on the profile's model shapes
    assert space["tokens_per_run"] == space["TRAIN"].total_tokens
    exec(_cell_with(cells, "def train(config)"), space)
    tiny_model = GPTConfig.ci(vocab_size=64, max_len=8, num_layers=1, num_heads=1, width=8, mlp_width=16)
    history = space["train"](tiny_model)
    assert history.tokens[-1] == space["tokens_per_run"] == 3 * full.accumulation * 2 * 8
