import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit.bigram import Bigram
from labkit.tokenize import CharVocab


@given(st.text(min_size=1))
def test_char_vocab_round_trips_any_text(text):
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and vocab.decode(ids) == text
    assert vocab.size == len(set(text))


def test_char_vocab_errors():
    vocab = CharVocab.from_text("abc")
    with pytest.raises(ValueError, match="character 'z' at position 2"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match="ids must lie in \\[0, 2\\]"):
        vocab.decode([0, 3])
    with pytest.raises(ValueError, match="non-empty"):
        CharVocab.from_text("")
    with pytest.raises(ValueError, match="single characters"):
        CharVocab(["ab"])


def test_bigram_hand_worked_example():
    # "abab a": pairs ab, ba, ab, b' '? use ids directly: 0 1 0 1 0 2
    model = Bigram.fit(np.array([0, 1, 0, 1, 0, 2]), vocab_size=3, smoothing=0.0)
    np.testing.assert_array_equal(model.counts, [[0, 2, 1], [2, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(model.probs[0], [0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(model.probs[2], [1 / 3] * 3)  # never seen: uniform
    # nll of 0->1 (2/3) and 1->0 (1): mean of -log(2/3), 0
    assert model.nll(np.array([0, 1, 0])) == pytest.approx(-np.log(2 / 3) / 2)


def test_bigram_smoothing_and_rows_sum_to_one():
    model = Bigram.fit(np.array([0, 1, 1, 2]), vocab_size=4, smoothing=0.5)
    np.testing.assert_allclose(model.probs.sum(axis=1), 1.0)
    assert (model.probs > 0).all()


def test_bigram_perplexity_of_a_deterministic_chain_is_one():
    ids = np.array([0, 1, 2] * 50)
    model = Bigram.fit(ids, vocab_size=3, smoothing=0.0)
    assert model.perplexity(ids) == pytest.approx(1.0)
    assert Bigram.fit(ids, vocab_size=3, smoothing=1.0).perplexity(ids) > 1.0


def test_bigram_samples_follow_the_chain():
    model = Bigram.fit(np.array([0, 1, 2] * 20), vocab_size=3, smoothing=0.0)
    sample = model.sample(jax.random.key(0), start=0, length=9)
    assert sample.tolist() == [1, 2, 0] * 3


def test_bigram_sampling_frequencies_match_probabilities():
    model = Bigram.fit(np.array([0, 1, 0, 1, 0, 1, 0, 0]), vocab_size=2, smoothing=0.0)
    # from 0: to 1 three times out of four; from 1: always to 0
    sample = model.sample(jax.random.key(1), start=0, length=4000)
    after_zero = sample[1:][sample[:-1] == 0]
    assert abs(np.mean(after_zero == 1) - 0.75) < 0.04


def test_bigram_errors_name_arguments():
    with pytest.raises(ValueError, match="ids must lie in \\[0, 1\\]"):
        Bigram.fit(np.array([0, 2]), vocab_size=2)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        Bigram.fit(np.array([0]), vocab_size=2)
    with pytest.raises(ValueError, match="1-D integer"):
        Bigram.fit(np.array([0.5, 1.0]), vocab_size=2)
    model = Bigram.fit(np.array([0, 1]), vocab_size=2)
    with pytest.raises(ValueError, match="start must be a token id"):
        model.sample(jax.random.key(0), start=5, length=3)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(jax.random.key(0), start=0, length=3, temperature=0)
