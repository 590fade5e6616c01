"""The training step runs in NNX's tree mode (``nnx.jit(graph=False)``): it must give exactly what graph mode gives,
parameters, optimizer state and dropout's random state included, with and without gradient accumulation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from labkit import lm
from labkit import step as step_module
from labkit.gpt import GPT, GPTConfig


def _leaves(node):
    return [np.asarray(jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
            for v in jax.tree.leaves(nnx.state(node))]


def _train(monkeypatch, graph: bool):
    if graph:  # the reference: the same step compiled in graph mode
        plain_jit = nnx.jit
        monkeypatch.setattr(step_module.nnx, "jit", lambda fn=None, **kw: plain_jit(fn) if fn else plain_jit)
    config = dataclasses.replace(GPTConfig.ci(), dropout=0.2)  # dropout: the random state must advance alike
    model = GPT(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 4, 17)))
    single = step_module.make_train_step(lm.loss)
    accumulated = step_module.make_train_step(lm.loss, accumulation=2)
    losses = [float(single(model, optimizer, x[0, :, :-1], x[0, :, 1:])) for _ in range(2)]
    losses += [float(accumulated(model, optimizer, x[:, :, :-1], x[:, :, 1:])) for _ in range(2)]
    monkeypatch.undo()
    return losses, _leaves(model) + _leaves(optimizer)


@pytest.mark.slow  # compiles the step four times
def test_tree_mode_step_is_bit_identical_to_graph_mode(monkeypatch):
    tree_losses, tree_state = _train(monkeypatch, graph=False)
    graph_losses, graph_state = _train(monkeypatch, graph=True)
    assert tree_losses == graph_losses
    assert len(tree_state) == len(graph_state)
    assert all(np.array_equal(a, b) for a, b in zip(tree_state, graph_state, strict=True))
