"""labkit.selfcheck: the reference solutions of the course pass every check, common mistakes get specific messages,
and the hidden tests' grader cannot be fooled by rebinding names."""

from __future__ import annotations

import builtins
import math
import re
from pathlib import Path

import jax.numpy as jnp
import nbformat
import numpy as np
import pytest

from labkit import selfcheck
from labkit.selfcheck import SelfCheckFailed

SOURCE = Path(__file__).resolve().parents[1] / "course" / "source"


def reference_solutions(assignment: str) -> dict:
    """The names the source notebook defines: its setup imports (hidden part left out) and every answer cell."""
    notebook = nbformat.read(next((SOURCE / assignment).glob("*.ipynb")), as_version=4)
    namespace: dict = {}
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not (meta.get("solution") or meta.get("grade_id") in ("setup", "word_counts")):
            continue
        code = re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", cell.source, flags=re.S)
        code = re.sub(r"^print\(.*$", "", code, flags=re.M)
        exec(compile(code, f"{assignment}:{meta['grade_id']}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def ch02():
    return reference_solutions("ch02_backprop")


@pytest.fixture(scope="module")
def ch03():
    return reference_solutions("ch03_attention")


@pytest.fixture(scope="module")
def ch04():
    return reference_solutions("ch04_bpe_schedule")


def fails_with(check, fn, *fragments: str) -> None:
    with pytest.raises(SelfCheckFailed) as info:
        check(fn)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


# ---- the reference solutions pass ---------------------------------------------------------------------------------


def test_reference_solutions_pass_every_check(ch02, ch03, ch04):
    for name, namespace in (("forward", ch02), ("softmax_cross_entropy", ch02), ("backward", ch02),
                            ("train", ch02), ("causal_mask", ch03), ("attention_weights", ch03),
                            ("attention", ch03), ("causal_self_attention", ch03), ("pair_counts", ch04),
                            ("merge", ch04), ("train_bpe", ch04), ("lr_schedule", ch04)):
        assert getattr(selfcheck, f"check_{name}")(namespace[name]).startswith(f"check_{name}: ")


# ---- chapter 2 ----------------------------------------------------------------------------------------------------


def test_forward_mistakes(ch02):
    def no_bias(p, x):
        return x @ p["W1"], np.tanh(x @ p["W1"]), np.tanh(x @ p["W1"]) @ p["W2"] + p["b2"]

    fails_with(selfcheck.check_forward, no_bias, "lacks the bias b1")
    fails_with(selfcheck.check_forward, lambda p, x: ch02["forward"](p, x)[2], "must return a tuple (a, h, z)")
    fails_with(selfcheck.check_forward, lambda p, x: tuple(v.astype(np.float32) for v in ch02["forward"](p, x)),
               "float64 inputs must give float64 outputs")


def test_loss_mistakes(ch02):
    def summed(z, y):
        loss, dz = ch02["softmax_cross_entropy"](z, y)
        return loss * len(y), dz

    def unstable(z, y):
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        dz = p.copy()
        dz[np.arange(len(y)), y] -= 1
        return -np.log(p[np.arange(len(y)), y]).mean(), dz / len(y)

    fails_with(selfcheck.check_softmax_cross_entropy, summed, "sum over the batch")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        fails_with(selfcheck.check_softmax_cross_entropy, unstable, "subtract each row's maximum")


def test_backward_mistakes(ch02):
    def transposed(p, x, y):
        return {**ch02["backward"](p, x, y), "W1": ch02["backward"](p, x, y)["W1"].T}

    def batch_sum(p, x, y):
        return {k: v * len(y) for k, v in ch02["backward"](p, x, y).items()}

    fails_with(selfcheck.check_backward, transposed, "grads['W1'] must have shape (5, 4); got (4, 5)")
    def half_b1(p, x, y):
        return {**ch02["backward"](p, x, y), "b1": ch02["backward"](p, x, y)["b1"] / 2}

    fails_with(selfcheck.check_backward, batch_sum, "grads['b2']", "B times too large")
    fails_with(selfcheck.check_backward, half_b1, "grads['b1']: wrong at index", "db1 sums da over the batch")
    fails_with(selfcheck.check_backward, lambda p, x, y: {k: np.float32(v) for k, v in ch02["backward"](p, x, y).items()},
               "has dtype float32")
    fails_with(selfcheck.check_backward, lambda p, x, y: [1, 2], "must return a dict")


def test_train_must_not_update_in_place(ch02):
    def in_place(params, x, y, *, learning_rate, steps):
        for _ in range(steps):
            grads = ch02["backward"](params, x, y)
            for key in params:
                params[key] -= learning_rate * grads[key]
        return params

    fails_with(selfcheck.check_train, in_place, "changed the params it was given")


# ---- chapter 3 ----------------------------------------------------------------------------------------------------


def test_mask_mistakes():
    fails_with(selfcheck.check_causal_mask, lambda t: np.triu(np.ones((t, t), bool)), "future positions are attended")
    fails_with(selfcheck.check_causal_mask, lambda t: np.tril(np.ones((t, t))), "must be boolean")
    fails_with(selfcheck.check_causal_mask, lambda t: np.tril(np.ones((t, t), bool), -1), "which is itself")


def test_attention_weight_mistakes(ch03):
    weights = ch03["attention_weights"]

    def over_queries(q, k, mask=None):
        scores = jnp.einsum("btnh,bsnh->bnts", q, k)
        return jnp.exp(scores) / jnp.exp(scores).sum(axis=-2, keepdims=True)

    def unscaled(q, k, mask=None):
        return weights(q * q.shape[-1] ** 0.5, k, mask=mask)

    fails_with(selfcheck.check_attention_weights, over_queries, "does not sum to 1")
    fails_with(selfcheck.check_attention_weights, lambda q, k, mask=None: weights(q, k), "future positions are attended")
    fails_with(selfcheck.check_attention_weights, unscaled, "without the scale")
    fails_with(selfcheck.check_attention_weights, lambda q, k, mask=None: weights(q, k, mask=mask).swapaxes(1, 2),
               "must have shape (2, 2, 5, 5)")
    fails_with(selfcheck.check_attention, lambda q, k, v, mask=None: ch03["attention"](q, k, v), "mask was ignored")


def test_self_attention_mistakes(ch03):
    fails_with(selfcheck.check_causal_self_attention, lambda x, p, n: ch03["causal_self_attention"](x, p, 1),
               "one head of width D = 8")

    def leaky(x, params, num_heads):
        mask = ch03["causal_mask"]
        ch03["causal_mask"] = lambda t: jnp.ones((t, t), dtype=bool)
        try:
            return ch03["causal_self_attention"](x, params, num_heads)
        finally:
            ch03["causal_mask"] = mask

    fails_with(selfcheck.check_causal_self_attention, leaky, "future positions are attended", "position 5")


# ---- chapter 4 ----------------------------------------------------------------------------------------------------


def test_bpe_mistakes(ch04):
    fails_with(selfcheck.check_pair_counts, lambda words: {p: 1 for w in words for p in zip(w, w[1:])},
               "must be counted")
    fails_with(selfcheck.check_pair_counts, lambda words: {**ch04["pair_counts"](words), (3, 2): 1},
               "(3, 2) is not an adjacent pair")

    def overlapping(ids, pair, new_id):
        return [new_id if (a, b) == tuple(pair) else a for a, b in zip(ids, [*ids[1:], None])]

    def in_place(ids, pair, new_id):
        ids[:] = ch04["merge"](list(ids), pair, new_id)
        return ids

    fails_with(selfcheck.check_merge, overlapping, "must be [9, 3, 9]")
    fails_with(selfcheck.check_merge, in_place, "return a new list")

    def largest_on_ties(text, n):
        merges = ch04["train_bpe"](text, 1)
        counts = ch04["pair_counts"](ch04["word_counts"](text))
        return merges + [max(p for p in counts if counts[p] == 2)] * (n - 1)

    fails_with(selfcheck.check_train_bpe, largest_on_ties, "on a tie, the smallest pair")


def test_schedule_mistakes(ch04):
    def from_zero(step, *, peak_lr, warmup_steps, total_steps, final_lr):
        if step < warmup_steps:
            return peak_lr * step / warmup_steps
        return ch04["lr_schedule"](step, peak_lr=peak_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                                   final_lr=final_lr)

    def falls_to_zero(step, **settings):
        return 0.0 if step > settings["total_steps"] else ch04["lr_schedule"](step, **settings)

    fails_with(selfcheck.check_lr_schedule, from_zero, "at step 0", "warm-up")
    fails_with(selfcheck.check_lr_schedule, falls_to_zero, "stays at final_lr")
    assert math.isclose(selfcheck.schedule_reference(9, peak_lr=1.0, warmup_steps=10, total_steps=20, final_lr=0.0),
                        1.0)


# ---- the hidden tests' grader -------------------------------------------------------------------------------------


def square_cases() -> dict:
    x = np.arange(6.0).reshape(2, 3)
    return {"square": [("a 2x3 array", (x,), {}, x**2, 1e-6, 1e-9)],
            "split": [("a pair", (x,), {}, (x[0], {"rest": x[1]}), 0.0, 0.0)],
            "mask": [("T=3", (3,), {}, np.tril(np.ones((3, 3), bool)), 0, 0)]}


def test_grader_passes_right_answers_and_names_the_first_wrong_one():
    grade = selfcheck.sealed_grader(square_cases())
    assert grade("square", lambda x: x * x) == "square: hidden cases passed (1)"
    assert grade("split", lambda x: (x[0], {"rest": x[1]})).startswith("split:")
    assert grade("mask", lambda t: np.tril(np.ones((t, t), bool))).startswith("mask:")
    for part, fn, message in (
            ("square", lambda x: x + x, "square on a 2x3 array: wrong at index (0, 1): got 2.0, expected 1.0"),
            ("square", lambda x: x.T, "square on a 2x3 array: expected shape (2, 3); got (3, 2)"),
            ("square", lambda x: x * np.nan, "wrong at index (0, 0): got nan, expected 0.0"),
            ("split", lambda x: (x[0],), "split on a pair: expected a tuple of 2 items"),
            ("split", lambda x: (x[0], {"other": x[1]}), "split on a pair[1]: expected keys ['rest']"),
            ("mask", lambda t: np.tril(np.ones((t, t))), "mask on T=3: expected dtype kind 'b'; got float64")):
        with pytest.raises(AssertionError, match=re.escape(message)):
            grade(part, fn)


def test_grader_gives_each_call_fresh_inputs():
    grade = selfcheck.sealed_grader({"square": square_cases()["square"] * 2})

    def square_in_place(x):
        x **= 2
        return x

    assert grade("square", square_in_place).startswith("square:")


def test_grader_fails_everything_if_setup_did_not_run_first():
    grade = selfcheck.sealed_grader(square_cases(), ran_first=False)
    with pytest.raises(AssertionError, match="did not run first"):
        grade("square", lambda x: x * x)


def test_rebinding_names_after_setup_does_not_fool_the_grader(monkeypatch):
    grade = selfcheck.sealed_grader(square_cases())  # built before the "student code" below
    monkeypatch.setattr(np, "allclose", lambda *args, **kwargs: True)
    monkeypatch.setattr(np, "asarray", lambda *args, **kwargs: np.zeros((2, 3)) ** 2)
    monkeypatch.setattr(np, "abs", lambda x: 0 * x)
    monkeypatch.setattr(np, "isfinite", lambda x: np.ones(np.shape(x), bool))
    monkeypatch.setattr(np.testing, "assert_allclose", lambda *args, **kwargs: None)
    monkeypatch.setattr(selfcheck, "sealed_grader", lambda *args, **kwargs: (lambda part, fn: "passed"))
    caught = []
    saved = builtins.abs, builtins.isinstance, builtins.len
    builtins.abs, builtins.isinstance, builtins.len = (lambda x: 0), (lambda *args: True), (lambda x: 2)
    try:
        for part, wrong in (("square", lambda x: x + 1), ("mask", lambda t: np.ones((t, t), bool))):
            try:
                grade(part, wrong)
            except AssertionError as error:
                caught.append(str(error))
    finally:
        builtins.abs, builtins.isinstance, builtins.len = saved
    assert len(caught) == 2 and all("wrong at index" in message for message in caught), caught


# ---- chapter 4: LoRA ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora():
    return reference_solutions("ch04_lora")


def test_lora_reference_solutions_pass(lora):
    assert selfcheck.check_lora_forward(lora["lora_forward"]).endswith("3 cases pass")
    assert "merged layer gives" in selfcheck.check_lora_merge(lora["merge"])
    assert selfcheck.check_lora_param_count(lora["lora_param_count"]).endswith("3 bad ranks pass")
    assert selfcheck.check_lora_step(lora["lora_step"]).endswith("2 cases pass")


def test_lora_reference_is_labkits_layer_and_its_merge():
    x, W, b, A, B = selfcheck.lora_case(np.random.default_rng(3), batch=4, inputs=6, outputs=5, rank=2)
    expected = x @ W + b + 3.0 / 2 * (x @ A) @ B
    np.testing.assert_allclose(selfcheck.lora_forward_reference(x, W, b, A, B, alpha=3.0), expected, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(x @ selfcheck.lora_merge_reference(W, A, B, alpha=3.0) + b, expected, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("check, wrong, message", [
    ("check_lora_forward", lambda x, W, b, A, B, alpha: x @ W + b + alpha * (x @ A) @ B, "not alpha"),
    ("check_lora_forward", lambda x, W, b, A, B, alpha: x @ W + b, "the adapters are missing"),
    ("check_lora_forward", lambda x, W, b, A, B, alpha: x @ W + alpha / A.shape[1] * (x @ A) @ B, "bias b is missing"),
    ("check_lora_merge", lambda W, A, B, alpha: W + A @ B, "scale A B by alpha / r"),
    ("check_lora_merge", lambda W, A, B, alpha: W.__iadd__(alpha / A.shape[1] * A @ B), "changed the W it was given"),
    ("check_lora_param_count", lambda shapes, r: (sum(r * i * o for i, o in shapes), 0), "r \\(I \\+ O\\) per layer"),
    ("check_lora_param_count", lambda shapes, r: (sum(r * (i + o) for i, o in shapes), sum(i * o for i, o in shapes)),
     "raise a ValueError"),
])
def test_lora_mistakes_get_specific_messages(check, wrong, message):
    with pytest.raises(SelfCheckFailed, match=message):
        getattr(selfcheck, check)(wrong)


def test_lora_step_mistakes_get_specific_messages(lora):
    step = lora["lora_step"]

    def frozen(W, b, A, B, x, y, **settings):  # returns the adapters it was given
        return A, B, step(W, b, A, B, x, y, **settings)[2]

    def uphill(W, b, A, B, x, y, **settings):  # A + lr * grad instead of A - lr * grad
        new_a, new_b, loss = step(W, b, A, B, x, y, **settings)
        return 2 * A - new_a, 2 * B - new_b, loss

    def summed(W, b, A, B, x, y, **settings):  # the loss reported as a sum over entries
        new_a, new_b, loss = step(W, b, A, B, x, y, **settings)
        return new_a, new_b, loss * y.size

    for wrong, message in ((frozen, "A did not move"), (uphill, "step against the gradient"), (summed, "not the sum")):
        with pytest.raises(SelfCheckFailed, match=message):
            selfcheck.check_lora_step(wrong)
