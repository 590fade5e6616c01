import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from labkit.generate import filter_logits, generate, sample_next
from labkit.gpt import GPT, GPTConfig

TINY = dict(vocab_size=40, max_len=32, num_layers=2, num_heads=4, width=16, mlp_width=32)


# A larger initial scale than training would use, so that the distributions are far from uniform.
CONFIGS = {
    "gpt2": GPTConfig(**TINY, init_std=0.3),
    "llama": GPTConfig.llama_style(**TINY, num_kv_heads=2, init_std=0.3),
}
MODELS = {}


def get_model(name):
    if name not in MODELS:
        MODELS[name] = GPT(CONFIGS[name], rngs=nnx.Rngs(0))
    return MODELS[name]


@pytest.fixture
def model():
    return get_model("gpt2")


PROMPT = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
GREEDY, SAMPLED, FILTERED = dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9)


@pytest.mark.parametrize(
    "name,sampling",
    [("gpt2", GREEDY), ("llama", GREEDY), ("gpt2", SAMPLED), ("llama", {**FILTERED, "end_token": 3})],
    ids=["gpt2-greedy", "llama-greedy", "gpt2-sampled", "llama-top-k-top-p-end"],
)
def test_cache_gives_exactly_the_tokens_of_full_recomputation(name, sampling):
    model = get_model(name)
    key = None if sampling["temperature"] == 0 else jax.random.key(42)
    cached = generate(model, PROMPT, max_new_tokens=12, key=key, **sampling)
    reference = generate(model, PROMPT, max_new_tokens=12, key=key, use_cache=False, **sampling)
    assert cached.shape == (3, 16)
    np.testing.assert_array_equal(cached[:, :4], PROMPT)
    np.testing.assert_array_equal(cached, reference)
    if sampling["temperature"] > 0:  # another key, another sample
        other = generate(model, PROMPT, max_new_tokens=12, key=jax.random.key(43), **sampling)
        assert not np.array_equal(other, cached)


def test_greedy_is_the_argmax_of_the_model_step_by_step(model):
    tokens = generate(model, PROMPT, max_new_tokens=12, key=None, temperature=0.0)
    logits = nnx.jit(lambda m, x: m(x))(model, tokens[:, :-1])  # by causality, position t sees tokens 0..t only
    np.testing.assert_array_equal(tokens[:, 4:], jnp.argmax(logits[:, 3:], axis=-1))


def test_end_token_stops_a_row_and_fills_the_rest(model):
    first = generate(model, PROMPT, max_new_tokens=12, key=None, temperature=0.0)
    end = int(first[0, 5])  # row 0's second new token: make it the end token
    tokens = np.asarray(generate(model, PROMPT, max_new_tokens=12, key=None, temperature=0.0, end_token=end))
    row = tokens[0, 4:]
    stop = int(np.argmax(row == end))
    assert stop <= 1 and (row[stop:] == end).all()
    np.testing.assert_array_equal(row[:stop], np.asarray(first)[0, 4:4 + stop])


def test_filter_logits_by_hand():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda **kw: np.isfinite(filter_logits(logits, **kw))[0].tolist()  # noqa: E731
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7: take the next; 0.8 reached
    assert kept(top_p=0.85) == [True, True, True, False]
    assert kept(top_p=0.4) == [True, False, False, False]  # the most likely token is always kept
    np.testing.assert_allclose(filter_logits(logits, temperature=2.0), logits / 2.0)


def test_sampling_follows_the_softmax():
    logits = jnp.log(jnp.array([[0.6, 0.3, 0.1]]))
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: sample_next(logits, k))(keys)[:, 0]
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.6, 0.3, 0.1], atol=0.03)
    cold = jax.vmap(lambda k: sample_next(logits, k, temperature=0.05))(keys[:200])
    assert (cold == 0).all()


def test_errors_name_the_argument(model):
    with pytest.raises(ValueError, match="prompt length 4 \\+ max_new_tokens 29 exceeds the model's max_len 32"):
        generate(model, PROMPT, max_new_tokens=29, key=None, temperature=0.0)
    with pytest.raises(ValueError, match="key must be a jax.random key when temperature > 0"):
        generate(model, PROMPT, max_new_tokens=2, key=None)
    with pytest.raises(ValueError, match="top_p must be None or a number in \\(0, 1\\]"):
        generate(model, PROMPT, max_new_tokens=2, key=jax.random.key(0), top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be None or an int in \\[1, 40\\]"):
        generate(model, PROMPT, max_new_tokens=2, key=jax.random.key(0), top_k=0)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        generate(model, PROMPT, max_new_tokens=2, key=jax.random.key(0), temperature=-1.0)
    with pytest.raises(ValueError, match="prompt must hold ids in \\[0, 39\\]"):
        generate(model, PROMPT + 35, max_new_tokens=2, key=None, temperature=0.0)
    with pytest.raises(ValueError, match="end_token must be None or an id in \\[0, 39\\]"):
        generate(model, PROMPT, max_new_tokens=2, key=None, temperature=0.0, end_token=40)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        generate(model, PROMPT, max_new_tokens=0, key=None, temperature=0.0)
