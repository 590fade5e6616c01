"""Text generation from a GPT: greedy, temperature, top-k and top-p sampling, with a key/value cache.

With the cache, the prompt is run once (filling every layer's cache) and each new token costs one position's work;
without it (``use_cache=False``, the reference), every step recomputes the whole sequence. Both give the same tokens
for the same ``key``: step i samples with ``jax.random.fold_in(key, i)``.

>>> from labkit.gpt import GPTConfig
>>> model, prompt = GPT(GPTConfig.ci(), rngs=nnx.Rngs(0)), jnp.array([[1, 2, 3]])
>>> tokens = generate(model, prompt, max_new_tokens=5, key=jax.random.key(0), temperature=0.8, top_k=40)
>>> tokens.shape                                            # (B, T + max_new_tokens): the prompt, then new tokens
(1, 8)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from labkit.gpt import GPT
from labkit.masks import values_readable


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy); got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, {vocab_size}]; got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1]; got {top_p!r}")


def filter_logits(logits: Float[Array, "B V"], *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Float[Array, "B V"]:
    """Logits / temperature, with -inf outside the ``top_k`` largest and outside the nucleus of mass ``top_p``."""
    _check_sampling(temperature, top_k, top_p, logits.shape[-1])
    if temperature == 0:
        raise ValueError("temperature 0 means greedy decoding, which has no distribution to filter; use argmax")
    logits = logits.astype(jnp.float32) / temperature  # (B, V)
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1): the k-th largest
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V), largest first
        probs = jax.nn.softmax(ordered, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # mass before this token is below p: the nucleus
        cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)  # (B, 1)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return logits


def sample_next(logits: Float[Array, "B V"], key: jax.Array | None, *, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> Int[Array, " B"]:
    """One token per row: argmax if ``temperature`` is 0 (``key`` unused), else a draw from the filtered softmax."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if key is None:
        raise ValueError("key must be a jax.random key when temperature > 0 (sampling); got None")
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


def generate(
    model: GPT,
    prompt: Int[Array, "B T"],
    *,
    max_new_tokens: int,
    key: jax.Array | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    end_token: int | None = None,
    use_cache: bool = True,
) -> Int[Array, "B T+M"]:
    """The prompt followed by up to ``max_new_tokens`` new tokens (M), sampled one at a time.

    A row that produces ``end_token`` is finished: its later positions hold ``end_token``, and generation stops
    early once every row is finished. ``temperature=0`` is greedy decoding (``key`` may be None). The prompt plus
    new tokens must fit in ``model.config.max_len``. Dropout is off during generation.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.gpt.GPT; got {type(model).__name__}")
    config = model.config
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be an integer array of shape (B, T) with T >= 1; got {prompt.dtype} "
                         f"{tuple(prompt.shape)}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    if prompt.shape[1] + max_new_tokens > config.max_len:
        raise ValueError(f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"max_len {config.max_len}")
    _check_sampling(temperature, top_k, top_p, config.vocab_size)
    if temperature > 0 and key is None:
        raise ValueError("key must be a jax.random key when temperature > 0 (sampling); got None")
    if end_token is not None and (not isinstance(end_token, int) or not 0 <= end_token < config.vocab_size):
        raise ValueError(f"end_token must be None or an id in [0, {config.vocab_size - 1}]; got {end_token!r}")
    values = np.asarray(prompt) if values_readable(prompt) else None  # not inside jit, nor sharded elsewhere
    if values is not None and (values.min() < 0 or values.max() >= config.vocab_size):
        raise ValueError(f"prompt must hold ids in [0, {config.vocab_size - 1}]; got values from {values.min()} "
                         f"to {values.max()}")
    return _generate(nnx.view(model, deterministic=True), prompt.astype(jnp.int32), key,
                     max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
                     top_p=None if top_p is None else float(top_p), end_token=end_token, use_cache=use_cache)


@nnx.jit(static_argnames=("max_new_tokens", "temperature", "top_k", "top_p", "end_token", "use_cache"))
def _generate(model: GPT, prompt: Array, key: jax.Array | None, *, max_new_tokens: int, temperature: float,
              top_k: int | None, top_p: float | None, end_token: int | None, use_cache: bool) -> Array:
    b, t = prompt.shape
    total = t + max_new_tokens
    tokens = jnp.zeros((b, total), jnp.int32).at[:, :t].set(prompt)  # (B, T + M): filled as we go
    if use_cache:
        logits, cache = model(prompt, cache=model.init_cache(b, total))
        last = logits[:, -1]  # (B, V): the distribution of the first new token
    else:
        cache, last = None, model(tokens)[:, t - 1]  # causal: the zeros after position t-1 cannot be seen

    def body(state):
        step, tokens, last, cache, done = state
        step_key = None if key is None else jax.random.fold_in(key, step)
        new = sample_next(last, step_key, temperature=temperature, top_k=top_k, top_p=top_p)  # (B,)
        if end_token is not None:
            new = jnp.where(done, end_token, new)
            done = done | (new == end_token)
        tokens = jax.lax.dynamic_update_slice(tokens, new[:, None], (0, t + step))
        if use_cache:
            logits, cache = model(new[:, None], cache=cache)
            last = logits[:, 0]
        else:  # the reference: recompute every position, read the one just written
            last = jax.lax.dynamic_index_in_dim(model(tokens), t + step, axis=1, keepdims=False)
        return step + 1, tokens, last, cache, done

    def cond(state):
        step, *_, done = state
        return (step < max_new_tokens) & ~jnp.all(done)

    state = (jnp.zeros((), jnp.int32), tokens, last, cache, jnp.zeros((b,), bool))
    steps, tokens, *_ = jax.lax.while_loop(cond, body, state)
    if end_token is not None:  # rows all finished early: the positions never reached hold end_token too
        tokens = jnp.where(jnp.arange(total)[None, :] >= t + steps, end_token, tokens)
    return tokens
