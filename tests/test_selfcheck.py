"""labkit.selfcheck: the reference solutions of the course pass every check, common mistakes get specific messages,
and the hidden tests' grader cannot be fooled by rebinding names."""

from __future__ import annotations

import builtins
import math
import re
from itertools import pairwise
from pathlib import Path

import jax
import jax.numpy as jnp
import nbformat
import numpy as np
import pytest

import labkit.nn
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


def one_line(error: BaseException) -> str:
    """The message with its line breaks (messages are wrapped at 80 characters) turned back into spaces."""
    return " ".join(str(error).split())


def fails_with(check, fn, *fragments: str) -> None:
    with pytest.raises(SelfCheckFailed) as info:
        check(fn)
    for fragment in fragments:
        assert fragment in one_line(info.value), str(info.value)


# ---- the reference solutions pass ---------------------------------------------------------------------------------


@pytest.mark.slow  # runs every check on the reference solutions
def test_reference_solutions_pass_every_check(ch02, ch03, ch04):
    for name, namespace in (("forward", ch02), ("softmax_cross_entropy", ch02), ("backward", ch02),
                            ("train", ch02), ("causal_mask", ch03), ("attention_weights", ch03),
                            ("attention", ch03), ("causal_self_attention", ch03), ("pair_counts", ch04),
                            ("merge", ch04), ("train_bpe", ch04), ("lr_schedule", ch04)):
        assert getattr(selfcheck, f"check_{name}")(namespace[name]).startswith(f"check_{name}: ")


# ---- the catalogue of typical bugs: each gets its own message, and no message gives the answer away -----------------

# (check, assignment, code defining the buggy function (it may call the reference solution's functions), message)
BUGS = [
    ("forward", "ch02_backprop", """
def forward(params, x):
    a = x @ params["W1"]
    h = np.tanh(a)
    return a, h, h @ params["W2"] + params["b2"]""", "lacks the bias b1"),
    ("forward", "ch02_backprop", """
def forward(params, x):
    a = x @ params["W1"] + params["b1"]
    h = np.maximum(a, 0)
    return a, h, h @ params["W2"] + params["b2"]""", "that is relu(a)"),
    ("forward", "ch02_backprop", """
def forward(params, x):
    a = jnp.asarray(x, jnp.float32) @ params["W1"] + params["b1"]
    h = jnp.tanh(a)
    return a, h, h @ params["W2"] + params["b2"]""", "jax.numpy computes in float32"),
    ("forward", "ch02_backprop", """
def forward(params, x):
    a = x @ params["W1"] + params["b1"]
    return np.tanh(a) @ params["W2"] + params["b2"]""", "must return a tuple (a, h, z)"),
    ("softmax_cross_entropy", "ch02_backprop", """
def softmax_cross_entropy(z, y):
    loss, dz = reference(z, y)
    return loss * len(y), dz""", "sum over the batch"),
    ("softmax_cross_entropy", "ch02_backprop", """
def softmax_cross_entropy(z, y):
    loss, dz = reference(z, y)
    return -loss, dz""", "wrong sign"),
    ("softmax_cross_entropy", "ch02_backprop", """
def softmax_cross_entropy(z, y):
    loss, dz = reference(z, y)
    return loss, dz * len(y)""", "B times too large"),
    ("softmax_cross_entropy", "ch02_backprop", """
def softmax_cross_entropy(z, y):
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1
    return -np.log(p[np.arange(len(y)), y]).mean(), dz / len(y)""", "subtract each row's maximum"),
    ("softmax_cross_entropy", "ch02_backprop", """
def softmax_cross_entropy(z, y):
    shifted = z - z.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1
    return -np.log(p[np.arange(len(y)), y]).mean(), dz / len(y)""", "underflowed to 0"),
    ("backward", "ch02_backprop", """
def backward(params, x, y):
    return {**reference(params, x, y), "W1": reference(params, x, y)["W1"].T}""",
     "grads['W1'] must have shape (5, 4) = the shape of W1; yours has shape (4, 5)"),
    ("backward", "ch02_backprop", """
def backward(params, x, y):
    return {key: value * len(y) for key, value in reference(params, x, y).items()}""", "B times too large"),
    ("backward", "ch02_backprop", """
def backward(params, x, y):
    a, h, z = forward(params, x)
    _, dz = softmax_cross_entropy(z, y)
    da = (dz @ params["W2"].T) * (1 - a**2)
    return {**reference(params, x, y), "W1": x.T @ da, "b1": da.sum(axis=0)}""", "not 1 - a**2"),
    ("backward", "ch02_backprop", """
def backward(params, x, y):
    a, h, z = forward(params, x)
    _, dz = softmax_cross_entropy(z, y)
    da = dz @ params["W2"].T
    return {**reference(params, x, y), "W1": x.T @ da, "b1": da.sum(axis=0)}""", "the tanh was skipped"),
    ("backward", "ch02_backprop", """
def backward(params, x, y):
    a, h, z = forward(params, x)
    _, dz = softmax_cross_entropy(z, y)
    return {**reference(params, x, y), "W2": a.T @ dz}""", "pre-activation a"),
    ("backward", "ch02_backprop", """
def backward(params, x, y):
    return {key: jnp.asarray(value, jnp.float32) for key, value in reference(params, x, y).items()}""",
     "jax.numpy computes in float32"),
    ("backward", "ch02_backprop", """
def backward(params, x, y):
    def loss(p):
        return labkit.nn.cross_entropy(jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], y)
    return jax.grad(loss)(params)""", "it uses grad, labkit"),
    ("backward", "ch02_backprop", "def backward(params, x, y):\n    return [1, 2]", "must return a dict"),
    ("train", "ch02_backprop", """
def train(params, x, y, *, learning_rate, steps):
    for _ in range(steps):
        grads = backward(params, x, y)
        for key in params:
            params[key] -= learning_rate * grads[key]
    return params""", "changed the params it was given"),
    ("train", "ch02_backprop", """
def train(params, x, y, *, learning_rate, steps):
    for _ in range(steps):
        grads = backward(params, x, y)
        params = {key: params[key] + learning_rate * grads[key] for key in params}
    return params""", "it climbs"),
    ("train", "ch02_backprop", """
def train(params, x, y, *, learning_rate, steps):
    grads = backward(params, x, y)
    return {key: params[key] - learning_rate * grads[key] for key in params}""", "it took one step"),
    ("causal_mask", "ch03_attention", "def causal_mask(T):\n    return np.triu(np.ones((T, T), bool))",
     "future positions are attended"),
    ("causal_mask", "ch03_attention", "def causal_mask(T):\n    return np.tril(np.ones((T, T)))", "must be boolean"),
    ("causal_mask", "ch03_attention", "def causal_mask(T):\n    return np.tril(np.ones((T, T), bool), -1)",
     "which is itself"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(q.shape[-1])
    return jnp.exp(scores) / jnp.exp(scores).sum(axis=-2, keepdims=True)""", "does not sum to 1"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    return reference(q, k)""", "future positions are attended"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    t = q.shape[1]
    return reference(q, k, mask=None if mask is None else np.tril(np.ones((t, t), bool)))""",
     "masked keys are attended"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    return reference(q * q.shape[-1] ** 0.5, k, mask=mask)""", "without the scale"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    return reference(q / q.shape[-1] ** 0.5, k, mask=mask)""", "divided by H = 4"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(q.shape[-1])
    if mask is not None:
        scores = jnp.where(mask, scores, -1e30)
    return jnp.exp(scores) / jnp.exp(scores).sum(axis=-1, keepdims=True)""", "inf or nan"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(q.shape[-1])
    return jax.nn.softmax(scores if mask is None else jnp.where(mask, scores, -1e30), axis=-1)""", "uses softmax"),
    ("attention_weights", "ch03_attention", """
def attention_weights(q, k, mask=None):
    return reference(q, k, mask=mask).swapaxes(1, 2)""",
     "must have shape (2, 2, 5, 5) = (B, N, T, S), heads before queries; yours has shape (2, 5, 2, 5)"),
    ("attention", "ch03_attention", """
def attention(q, k, v, mask=None):
    return jnp.einsum("bnts,bsnh->btnh", attention_weights(q, k), v)""", "mask was ignored"),
    ("attention", "ch03_attention", """
def attention(q, k, v, mask=None):
    return jnp.einsum("bnst,bsnh->btnh", attention_weights(q, k, mask=mask), v)""", "used transposed"),
    ("attention", "ch03_attention", """
def attention(q, k, v, mask=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask)""", "uses dot_product_attention"),
    ("causal_self_attention", "ch03_attention", """
def causal_self_attention(x, params, num_heads):
    return reference(x, params, 1)""", "one head of width D = 8"),
    ("causal_self_attention", "ch03_attention", """
def causal_self_attention(x, params, num_heads):
    b, t, d = x.shape
    q, k, v = (x @ params[f"W{n}"] + params[f"b{n}"] for n in "qkv")
    q, k, v = (y.reshape(b, num_heads, t, d // num_heads).transpose(0, 2, 1, 3) for y in (q, k, v))
    y = attention(q, k, v, mask=causal_mask(t)).transpose(0, 2, 1, 3)
    return y.reshape(b, t, d) @ params["Wo"] + params["bo"]""", "reshape straight to (B, N, T, H)"),
    ("causal_self_attention", "ch03_attention", """
def causal_self_attention(x, params, num_heads):
    b, t, d = x.shape
    q, k, v = (x @ params[f"W{n}"] + params[f"b{n}"] for n in "qkv")
    q, k, v = (y.reshape(b, t, d // num_heads, num_heads).swapaxes(2, 3) for y in (q, k, v))
    y = attention(q, k, v, mask=causal_mask(t)).swapaxes(2, 3)
    return y.reshape(b, t, d) @ params["Wo"] + params["bo"]""", "interleaved"),
    ("causal_self_attention", "ch03_attention", """
def causal_self_attention(x, params, num_heads):
    b, t, d = x.shape
    q, k, v = (jnp.einsum("btd,ed->bte", x, params[f"W{n}"]) + params[f"b{n}"] for n in "qkv")
    q, k, v = (y.reshape(b, t, num_heads, d // num_heads) for y in (q, k, v))
    y = attention(q, k, v, mask=causal_mask(t)).reshape(b, t, d)
    return jnp.einsum("btd,ed->bte", y, params["Wo"]) + params["bo"]""", "used transposed"),
    ("causal_self_attention", "ch03_attention", """
def causal_self_attention(x, params, num_heads):
    b, t, d = x.shape
    q, k, v = (x @ params[f"W{n}"] + params[f"b{n}"] for n in "qkv")
    q, k, v = (y.reshape(b, t, num_heads, d // num_heads) for y in (q, k, v))
    return attention(q, k, v, mask=causal_mask(t)).reshape(b, t, d)""", "output projection is missing"),
    ("causal_self_attention", "ch03_attention", """
def causal_self_attention(x, params, num_heads):
    b, t, d = x.shape
    q, k, v = (x @ params[f"W{n}"] + params[f"b{n}"] for n in "qkv")
    q, k, v = (y.reshape(b, t, num_heads, d // num_heads) for y in (q, k, v))
    return attention(q, k, v).reshape(b, t, d) @ params["Wo"] + params["bo"]""", "causal mask is missing"),
]

REFERENCES = {"softmax_cross_entropy": selfcheck.softmax_cross_entropy_reference,
              "backward": selfcheck.backward_reference, "attention_weights": selfcheck.attention_weights_reference,
              "causal_self_attention": selfcheck.self_attention_reference}
# Lines of code that would give an answer away, beyond the solution lines themselves.
ANSWERS = {"ch02_backprop": ["x.T @ da", "h.T @ dz", "da.sum(axis=0)", "dz.sum(axis=0)", '@ params["W2"].T'],
           "ch03_attention": ["bnts,bsnh->btnh", "btnh,bsnh->bnts", "reshape(b, t, num_heads"]}


def solution_lines(assignment: str) -> set[str]:
    """The code (comments dropped) of every solution line of 12 characters or more in the source notebook."""
    notebook = nbformat.read(next((SOURCE / assignment).glob("*.ipynb")), as_version=4)
    lines = set()
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            lines |= {line.split("#")[0].strip() for line in cell.source.splitlines()}
    return {line for line in lines if len(line) >= 12}


@pytest.mark.parametrize("part, assignment, code, message", BUGS,
                         ids=[f"{part}-{i}" for i, (part, *_) in enumerate(BUGS)])
def test_each_typical_bug_gets_its_own_message(part, assignment, code, message, ch02, ch03):
    namespace = dict(ch02 if assignment == "ch02_backprop" else ch03)
    namespace.update(reference=REFERENCES.get(part), jax=jax, jnp=jnp, labkit=labkit)
    with np.errstate(all="ignore"):
        exec(compile(code.strip(), f"bug in {part}", "exec"), namespace)
        with pytest.raises(SelfCheckFailed) as info:
            getattr(selfcheck, f"check_{part}")(namespace[part])
    text = one_line(info.value)
    assert message in text, text
    assert all(len(line) <= 80 for line in str(info.value).splitlines()), "a line longer than validate shows"
    revealed = [line for line in solution_lines(assignment) | set(ANSWERS[assignment]) if line in text]
    assert not revealed, f"the message gives the answer away ({revealed}): {text}"


def test_a_part_is_checked_on_the_references_of_the_parts_it_calls(ch02, ch03):
    """A broken forward fails check_forward only; backward and train, which call it, still pass."""
    namespace = dict(ch02)
    exec("def forward(params, x):\n    raise NotImplementedError()", namespace)
    exec("def softmax_cross_entropy(z, y):\n    return 0.0, z", namespace)
    for part in ("backward", "train"):
        assert getattr(selfcheck, f"check_{part}")(namespace[part]).startswith(f"check_{part}:")
    with pytest.raises(NotImplementedError):
        selfcheck.check_forward(namespace["forward"])
    assert namespace["forward"] is not selfcheck.forward_reference  # the student's names are put back
    attention = dict(ch03)
    exec("def causal_mask(T):\n    return jnp.ones((T, T), bool)", attention)
    exec("def attention_weights(q, k, mask=None):\n    return None", attention)
    assert selfcheck.check_causal_self_attention(attention["causal_self_attention"]).endswith("pass")
    assert selfcheck.check_attention(attention["attention"]).endswith("passes")


def test_the_references_are_labkits_answers(ch02, ch03):
    params, x, y = selfcheck.two_layer_case(np.random.default_rng(9))
    for got, want in zip(selfcheck.forward_reference(params, x), ch02["forward"](params, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    rng = np.random.default_rng(10)
    x, params = rng.normal(size=(2, 5, 12)).astype(np.float32), selfcheck.self_attention_params(rng, 12)
    np.testing.assert_allclose(selfcheck.self_attention_variant(x, params, 3), selfcheck.self_attention_reference(
        x, params, 3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(selfcheck.causal_mask_reference(4), ch03["causal_mask"](4))
    x, W, b, A, B = selfcheck.lora_case(rng, batch=3, inputs=5, outputs=4, rank=2)
    np.testing.assert_allclose(selfcheck.lora_forward_function(x, W, b, A, B, 3.0),
                               selfcheck.lora_forward_reference(x, W, b, A, B, alpha=3.0), rtol=1e-5, atol=1e-5)


def test_forbidden_names_look_through_helpers_and_aliases():
    namespace: dict = {}
    exec("import jax\nfrom jax.nn import softmax as sm\n"
         "def helper(x):\n    return jax.nn.softmax(x)\n"
         "def uses_helper(x):\n    return helper(x)\n"
         "def uses_alias(x):\n    return sm(x)\n"
         "def softmax(x):\n    return x\n"
         "def own(x):\n    return softmax(x)\n", namespace)
    assert selfcheck.forbidden_names(namespace["uses_alias"], ["softmax"]) == ["sm"]
    assert selfcheck.forbidden_names(namespace["own"], ["softmax"]) == []
    assert selfcheck.forbidden_names(namespace["uses_helper"], ["dot_product_attention"]) == []


def test_the_grader_binds_references_and_enforces_rules():
    namespace: dict = {}
    exec("import numpy as np\n"
         "def double(x):\n    raise ValueError('broken')\n"
         "def quadruple(x):\n    return double(double(x))\n"
         "def cheat(x):\n    return np.multiply(x, 4)\n", namespace)
    x = np.arange(3.0)
    grade = selfcheck.sealed_grader({"quadruple": [("x", (x,), {}, 4 * x, 0, 0)]},
                                    references={"double": lambda x: 2 * x}, forbidden={"quadruple": ["multiply"]})
    assert grade("quadruple", namespace["quadruple"]).startswith("quadruple: hidden cases passed")
    with pytest.raises(AssertionError, match="quadruple uses multiply"):
        grade("quadruple", namespace["cheat"])
    with pytest.raises(ValueError):
        namespace["double"](x)  # the student's own function is back


# ---- chapter 4 ----------------------------------------------------------------------------------------------------


def test_bpe_mistakes(ch04):
    fails_with(selfcheck.check_pair_counts, lambda words: {p: 1 for w in words for p in pairwise(w)},
               "must be counted")
    fails_with(selfcheck.check_pair_counts, lambda words: {**ch04["pair_counts"](words), (3, 2): 1},
               "(3, 2) is not an adjacent pair")

    def overlapping(ids, pair, new_id):
        return [new_id if (a, b) == tuple(pair) else a for a, b in zip(ids, [*ids[1:], None], strict=True)]

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


@pytest.mark.slow  # runs every check on the reference solutions
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
    with pytest.raises(SelfCheckFailed) as info:
        getattr(selfcheck, check)(wrong)
    assert re.search(message, one_line(info.value)), str(info.value)


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
        with pytest.raises(SelfCheckFailed) as info:
            selfcheck.check_lora_step(wrong)
        assert re.search(message, one_line(info.value)), str(info.value)
