"""labkit.zoo: the pretrained GPT is trained once, then loaded with identical weights; its tokenizer never sees the
validation text; bad settings are refused."""

import jax
import numpy as np
import pytest
from flax import nnx

from labkit import data
from labkit.zoo import pretrained_gpt, split_text


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_second_call_loads_the_same_weights_without_training(tmp_path, tokenizer_training_texts):
    first = pretrained_gpt("ci", key=jax.random.key(0), cache=tmp_path, progress=False)
    train_text, valid_text = split_text(data.load("pydoc"), validation_fraction=0.1)
    assert tokenizer_training_texts == [train_text]  # one tokenizer, trained on exactly the training part
    assert first.tokenizer.decode(first.train_ids, errors="strict") == train_text  # what the model trains on
    assert first.tokenizer.decode(first.valid_ids, errors="strict") == valid_text  # the rest: seen by neither
    assert first.validation_loss < np.log(first.tokenizer.vocab_size)  # it learned something beyond uniform
    assert [p.name for p in tmp_path.iterdir()] == [first.directory.name]
    saved = sorted(p.name for p in first.directory.iterdir())
    assert saved == ["checkpoints", "tokenizer.json", "train.npy", "valid.npy"]
    second = pretrained_gpt("ci", key=jax.random.key(0), cache=tmp_path, progress=False)
    assert second.directory == first.directory
    assert second.history.loss == first.history.loss  # restored from the checkpoint, not retrained
    assert len(tokenizer_training_texts) == 1  # the tokenizer and token ids too
    for a, b in zip(_leaves(first.model), _leaves(second.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert second.tokenizer == first.tokenizer
    np.testing.assert_array_equal(second.train_ids, first.train_ids)
    np.testing.assert_array_equal(second.valid_ids, first.valid_ids)
    assert 0.08 < len(first.valid_ids) / (len(first.train_ids) + len(first.valid_ids)) < 0.12  # about a tenth


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3, 0.5])
def test_split_text_holds_out_the_end_from_a_paragraph_start(fraction):
    text = data.load("pydoc")
    train_text, valid_text = split_text(text, validation_fraction=fraction)
    assert train_text + valid_text == text
    assert train_text.endswith("\n\n") and not valid_text.startswith("\n")  # cut just after a blank line
    assert "\n\n" not in text[len(train_text) : round(len(text) * (1 - fraction))]  # the last blank line before
    assert abs(len(valid_text) / len(text) - fraction) < 0.01


def test_split_text_without_a_blank_line_cuts_at_the_character():
    assert split_text("abcdefghij", validation_fraction=0.3) == ("abcdefg", "hij")


@pytest.mark.parametrize("text, fraction, message", [
    ("", 0.1, "text must be a str of at least 2 characters"),
    (b"bytes", 0.1, "text must be a str"),
    ("abc", 1.0, "validation_fraction must be a float strictly between 0 and 1"),
    ("abc", True, "validation_fraction must be a float strictly between 0 and 1"),
    ("abc", 0.01, "leaves an empty part"),
    ("ab", 0.9, "leaves an empty part"),
])
def test_split_text_refuses_bad_input(text, fraction, message):
    with pytest.raises(ValueError, match=message):
        split_text(text, validation_fraction=fraction)


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
