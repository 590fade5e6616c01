"""labkit.privacy: canaries, exposure (exact and sampled), greedy extraction, the loss-threshold membership attack."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from labkit import data, lm, privacy
from labkit.bpe import BPETokenizer
from labkit.generate import generate
from labkit.gpt import GPT, GPTConfig
from labkit.privacy import Canary


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(data.load("pydoc")[:20_000], vocab_size=300, pattern=privacy.DIGIT_PATTERN)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    gpt = GPT(GPTConfig.ci(vocab_size=tokenizer.vocab_size, max_len=24), rngs=nnx.Rngs(3))
    gpt.eval()
    return gpt


# ---- canaries -----------------------------------------------------------------------------------------------------


def test_canaries_are_deterministic_distinct_and_of_the_asked_length():
    prefixes = [f"the pin of user{i} is" for i in range(50)]
    first = privacy.make_canaries(prefixes, digits=2, rng=np.random.default_rng(7))
    again = privacy.make_canaries(prefixes, digits=2, rng=np.random.default_rng(7))
    assert first == again
    assert len({c.secret for c in first}) == 50 and all(len(c.secret) == 2 and c.secret.isdigit() for c in first)
    assert first[0].text == f"the pin of user0 is {first[0].secret}"


@pytest.mark.parametrize("kwargs, match", [
    (dict(prefixes=["a"], digits=0), "digits"),
    (dict(prefixes=[], digits=2), "prefixes"),
    (dict(prefixes=["a", "a"], digits=2), "prefixes"),
    (dict(prefixes=[str(i) for i in range(11)], digits=1), "digits=1 allows 10"),
])
def test_make_canaries_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        privacy.make_canaries(rng=np.random.default_rng(0), **kwargs)
    with pytest.raises(TypeError, match="rng"):
        privacy.make_canaries(["a"], digits=2, rng=0)


def test_canary_checks_its_fields():
    with pytest.raises(ValueError, match="secret"):
        Canary("my pin is", "12a4")
    with pytest.raises(ValueError, match="prefix"):
        Canary(" ", "1234")


def test_insert_canaries_keeps_the_documents_in_order_and_inserts_each_copy():
    documents = [f"doc {i}" for i in range(30)]
    canaries = [Canary("the pin of ada is", "1234"), Canary("the pin of bob is", "5678")]
    out = privacy.insert_canaries(documents, canaries, [5, 1], rng=np.random.default_rng(0))
    assert len(out) == 36
    assert [d for d in out if d.startswith("doc")] == documents
    assert out.count(canaries[0].text) == 5 and out.count(canaries[1].text) == 1
    assert out == privacy.insert_canaries(documents, canaries, [5, 1], rng=np.random.default_rng(0))
    assert out != privacy.insert_canaries(documents, canaries, [5, 1], rng=np.random.default_rng(1))


@pytest.mark.parametrize("documents, repetitions, match", [
    ([], [1], "documents is empty"),
    (["a"], [0], "repetitions must be an int >= 1"),
    (["a"], [1, 2], "equal length"),
])
def test_insert_canaries_rejects_bad_input(documents, repetitions, match):
    with pytest.raises(ValueError, match=match):
        privacy.insert_canaries(documents, [Canary("p", "1")], repetitions, rng=np.random.default_rng(0))


# ---- exposure -----------------------------------------------------------------------------------------------------


def test_exposure_of_a_scorer_whose_ranking_we_choose():
    scores = np.arange(10**4, dtype=float)  # "0000" is the likeliest secret, "9999" the least likely
    first, tenth, last = (privacy.exposure(scores, s) for s in ("0000", "0009", "9999"))
    assert first.rank == 1 and first.exposure == pytest.approx(math.log2(10**4)) and first.method == "full"
    assert tenth.rank == 10 and tenth.exposure == pytest.approx(math.log2(10**4) - math.log2(10))
    assert last.rank == 10**4 and last.exposure == pytest.approx(0.0)
    assert privacy.exposure(-scores, "9999").exposure == pytest.approx(math.log2(10**4))


def test_exposure_ties_count_in_the_secrets_favour_and_rank_bounds_are_checked():
    assert privacy.exposure(np.zeros(100), "42").rank == 1
    assert privacy.exposure_from_rank(1, 1) == 0.0
    for rank in (0, 11):
        with pytest.raises(ValueError, match="rank"):
            privacy.exposure_from_rank(rank, 10)
    with pytest.raises(ValueError, match=r"shape \(1000,\)"):
        privacy.exposure(np.zeros(100), "123")
    with pytest.raises(ValueError, match="secret"):
        privacy.exposure(np.zeros(100), "4x")


def test_estimated_exposure_scales_the_sampled_fraction_to_the_space():
    sample = np.arange(1000, dtype=float)
    assert privacy.estimated_exposure(sample, -1.0, 10**12).exposure == pytest.approx(math.log2(10**12))
    half = privacy.estimated_exposure(sample, 499.5, 10**12)
    assert half.rank == pytest.approx(1 + 0.5e12) and half.method == "sampled"
    assert half.exposure == pytest.approx(1.0, abs=1e-9)  # the median secret: 1 bit


def test_all_secrets_enumerates_the_space_in_order():
    secrets = privacy.all_secrets(3)
    assert len(secrets) == 1000 and secrets[0] == "000" and secrets[417] == "417"
    with pytest.raises(ValueError, match="MAX_ENUMERATED"):
        privacy.all_secrets(6)


def _direct_log_perplexity(model, tokenizer, canary: Canary) -> float:
    ids = privacy.canary_ids(tokenizer, canary)
    log_p = np.asarray(nnx.log_softmax(model(jnp.asarray(ids[None, :-1])), axis=-1))[0]
    start = len(ids) - len(canary.secret) - 2
    return -sum(log_p[t, ids[t + 1]] for t in range(start, len(ids) - 1)) / math.log(2)


def test_secret_log_perplexities_match_scoring_each_secret_alone(model, tokenizer):
    prefix = "The secret number of Ada is"
    scores = privacy.secret_log_perplexities(model, tokenizer, prefix, digits=3, batch_size=64)
    assert scores.shape == (1000,)
    for secret in ("000", "417", "999"):
        expected = _direct_log_perplexity(model, tokenizer, Canary(prefix, secret))
        assert scores[int(secret)] == pytest.approx(expected, rel=1e-4)
    one = privacy.secret_log_perplexities(model, tokenizer, prefix, digits=1)
    assert one[7] == pytest.approx(_direct_log_perplexity(model, tokenizer, Canary(prefix, "7")), rel=1e-4)


def test_a_canary_longer_than_the_context_is_refused(model, tokenizer):
    long_prefix = "The secret number of the account that belongs to Ada Lovelace is"
    with pytest.raises(ValueError, match="max_len=24"):
        privacy.secret_log_perplexities(model, tokenizer, long_prefix, digits=4)
    with pytest.raises(ValueError, match="max_len=24"):
        privacy.extracted(model, tokenizer, [Canary(long_prefix, "1234")])


def test_a_tokenizer_that_merges_digits_is_refused(model):
    merging = BPETokenizer.train("1234 1234 1234 5678 5678 " * 50, vocab_size=270)
    with pytest.raises(ValueError, match="DIGIT_PATTERN"):
        privacy.secret_log_perplexities(model, merging, "my pin is", digits=2)


def test_extracted_agrees_with_greedy_generation(model, tokenizer):
    def greedy(prefix: str, new_tokens: int) -> str:
        prompt = tokenizer.encode_ordinary(prefix)
        out = generate(model, jnp.asarray(prompt[None, :]), max_new_tokens=new_tokens, key=None, temperature=0.0)
        return tokenizer.decode(np.asarray(out[0, len(prompt):]))

    canaries = [Canary("The secret number of Ada is", "123"), Canary("The secret number of Bob is", "98")]
    written = greedy(canaries[0].prefix, 4)
    if written[0] == " " and written[1:].isdigit():  # the untrained model happens to write a number: use it too
        canaries.append(Canary(canaries[0].prefix, written[1:]))
    expected = [greedy(c.prefix, len(c.secret) + 1) == " " + c.secret for c in canaries]
    assert privacy.extracted(model, tokenizer, canaries).tolist() == expected


# ---- membership inference -----------------------------------------------------------------------------------------


def test_document_losses_match_the_language_model_loss(model):
    rng = np.random.default_rng(0)
    full = rng.integers(0, model.config.vocab_size, size=model.config.max_len + 1)
    short = full[:10]
    losses = privacy.document_losses(model, [full, short, np.r_[full, full]], batch_size=2)
    expected_full = float(lm.loss(model, jnp.asarray(full[None, :-1]), jnp.asarray(full[None, 1:])))
    expected_short = float(lm.loss(model, jnp.asarray(short[None, :-1]), jnp.asarray(short[None, 1:])))
    assert losses == pytest.approx([expected_full, expected_short, expected_full], rel=1e-5)


def test_document_losses_reject_empty_input(model):
    with pytest.raises(ValueError, match="documents is empty"):
        privacy.document_losses(model, [])
    with pytest.raises(ValueError, match="document 1 has 1"):
        privacy.document_losses(model, [np.arange(5), np.arange(1)])


def test_membership_auc_hand_worked():
    assert privacy.membership_auc(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == 1.0
    assert privacy.membership_auc(np.array([1.0, 2.0]), np.array([0.1, 0.2])) == 0.0
    assert privacy.membership_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    with pytest.raises(ValueError, match="member_losses"):
        privacy.membership_auc(np.array([]), np.array([1.0]))
