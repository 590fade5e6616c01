"""labkit.zoo: the pretrained GPT is trained once, then loaded with identical weights; bad settings are refused."""

import jax
import numpy as np
import pytest
from flax import nnx

from labkit.zoo import pretrained_gpt


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_second_call_loads_the_same_weights_without_training(tmp_path):
    first = pretrained_gpt("ci", key=jax.random.key(0), cache=tmp_path, progress=False)
    assert first.validation_loss < np.log(first.tokenizer.vocab_size)  # it learned something beyond uniform
    assert [p.name for p in tmp_path.iterdir()] == [first.directory.name]
    assert sorted(p.name for p in first.directory.iterdir()) == ["checkpoints", "tokenizer.json", "tokens.npy"]
    second = pretrained_gpt("ci", key=jax.random.key(0), cache=tmp_path, progress=False)
    assert second.directory == first.directory
    assert second.history.loss == first.history.loss  # restored from the checkpoint, not retrained
    for a, b in zip(_leaves(first.model), _leaves(second.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert second.tokenizer == first.tokenizer
    np.testing.assert_array_equal(second.valid_ids, first.valid_ids)
    assert len(first.train_ids) + len(first.valid_ids) > 10 * len(first.valid_ids) > 0


def test_another_key_or_setting_gets_its_own_folder(tmp_path):
    a = pretrained_gpt("ci", key=jax.random.key(0), cache=tmp_path, progress=False,
                       train_overrides={"steps": 5, "warmup_steps": 1})
    b = pretrained_gpt("ci", key=jax.random.key(1), cache=tmp_path, progress=False,
                       train_overrides={"steps": 5, "warmup_steps": 1})
    c = pretrained_gpt("ci", key=jax.random.key(0), cache=tmp_path, progress=False, vocab_size=300,
                       train_overrides={"steps": 5, "warmup_steps": 1})
    assert len({a.directory, b.directory, c.directory}) == 3
    assert c.config.vocab_size == c.tokenizer.vocab_size == 300


@pytest.mark.parametrize("kwargs, message", [
    (dict(corpus="shakespeare"), "corpus must be one of pydoc, stdlib"),
    (dict(vocab_size=100), "vocab_size must be an int of at least 256"),
    (dict(key=0), "key must be a typed jax random key"),
    (dict(model_overrides={"max_len": 16}), "max_len \\(16\\) is shorter than the training seq_len"),
])
def test_bad_settings_are_refused(tmp_path, kwargs, message):
    kwargs = {"key": jax.random.key(0), **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        pretrained_gpt("ci", cache=tmp_path, progress=False, **kwargs)
