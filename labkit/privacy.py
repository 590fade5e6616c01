"""Memorization, measured: canaries and their exposure, greedy extraction, a loss-threshold membership attack (ch. 7).

A *canary* (Carlini et al. 2019, "The Secret Sharer") is a made-up record, a fixed prefix and a random secret of
digits, inserted into the training text a chosen number of times. Its *exposure* compares the model's
log-perplexity of the true secret with that of every other secret the format allows (the candidate space R):

    exposure = log2 |R| - log2 rank(true secret),

where rank 1 means that no candidate is more likely than the true secret. A model that never saw the canary gives
it a rank spread evenly over 1 .. |R| (exposure 1 / ln 2 = 1.44 bits on average); one that memorized it ranks it
first (exposure log2 |R|). ``exposure`` ranks among every candidate (exact; up to ``MAX_ENUMERATED`` of them, which
``secret_log_perplexities`` scores for a GPT); ``estimated_exposure`` estimates the rank from a uniform sample.
Membership inference (``document_losses``, ``membership_auc``) asks whether a document was in the training set.

>>> rng = np.random.default_rng(0)
>>> canaries = make_canaries(["the pin of ada is", "the pin of bob is"], digits=4, rng=rng)
>>> canaries[0].text                                   # the prefix, a space, the secret
'the pin of ada is 8506'
>>> exposure_from_rank(1, 10**4)                       # ranked first of 10,000: log2(10,000) bits
13.287...
>>> docs = insert_canaries(["a", "b", "c"], canaries, repetitions=[2, 1], rng=rng)
>>> len(docs), sum(doc == canaries[0].text for doc in docs)
(6, 2)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from labkit.bpe import GPT2_PATTERN, BPETokenizer
from labkit.gpt import GPT
from labkit.metrics import roc_auc

__all__ = ["DIGIT_PATTERN", "Canary", "Exposure", "all_secrets", "canary_ids", "document_losses",
           "estimated_exposure", "exposure", "exposure_from_rank", "extracted", "insert_canaries", "make_canaries",
           "membership_auc", "secret_log_perplexities", "secret_rank"]

MAX_ENUMERATED = 100_000  # candidate spaces up to this size are scored whole; larger ones are sampled
# GPT-2's pre-tokenizer with every digit a pre-token of its own (as LLaMA's tokenizer splits numbers), so that a
# secret is written one token per digit whatever merges the tokenizer learned.
DIGIT_PATTERN = GPT2_PATTERN.replace(r" ?\p{N}+", r"\p{N}")


@dataclasses.dataclass(frozen=True)
class Canary:
    """A made-up record: ``prefix`` (known to the attacker), a space, then ``secret`` (digits, to be guessed)."""

    prefix: str  # e.g. "the pin of ada is"
    secret: str  # e.g. "8506": a string of decimal digits

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not self.prefix.strip():
            raise ValueError(f"prefix must be a non-empty str; got {self.prefix!r}")
        if not isinstance(self.secret, str) or not self.secret.isdigit() or not self.secret.isascii():
            raise ValueError(f"secret must be a non-empty str of the digits 0-9; got {self.secret!r}")

    @property
    def text(self) -> str:
        """The canary as it appears in the training text."""
        return f"{self.prefix} {self.secret}"


def _check_int(name: str, value: object, low: int) -> None:
    if type(value) is not int or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); got {type(rng).__name__}")


def make_canaries(prefixes: Sequence[str], *, digits: int, rng: np.random.Generator) -> list[Canary]:
    """One canary per prefix, with distinct secrets of ``digits`` digits drawn uniformly by ``rng``."""
    _check_int("digits", digits, 1)
    _check_rng(rng)
    prefixes = list(prefixes)
    if not prefixes or len(set(prefixes)) != len(prefixes):
        raise ValueError(f"prefixes must be a non-empty sequence of distinct strs; got {prefixes!r:.80}")
    if len(prefixes) > 10**digits:
        raise ValueError(f"{len(prefixes)} prefixes need distinct secrets, but digits={digits} allows {10**digits}")
    numbers: list[int] = []
    while len(numbers) < len(prefixes):  # draw again on a repeat, so that every secret is different
        number = int(rng.integers(10**digits))
        if number not in numbers:
            numbers.append(number)
    return [Canary(prefix, f"{number:0{digits}d}") for prefix, number in zip(prefixes, numbers, strict=True)]


def insert_canaries(documents: Sequence[str], canaries: Sequence[Canary], repetitions: Sequence[int], *,
                    rng: np.random.Generator) -> list[str]:
    """The documents with canary i inserted ``repetitions[i]`` times, each copy a document of its own placed at a
    boundary between documents drawn uniformly by ``rng`` (the original order is kept)."""
    _check_rng(rng)
    documents = list(documents)
    if not documents:
        raise ValueError("documents is empty; expected at least one document to insert canaries into")
    if len(canaries) != len(repetitions) or not canaries:
        raise ValueError(f"canaries and repetitions must be non-empty and of equal length; got {len(canaries)} "
                         f"and {len(repetitions)}")
    for count in repetitions:
        _check_int("each of repetitions", count, 1)
    copies = [canary.text for canary, count in zip(canaries, repetitions, strict=True) for _ in range(count)]
    slots = rng.integers(0, len(documents) + 1, size=len(copies))  # slot j: just before documents[j]
    copies = [copies[i] for i in rng.permutation(len(copies))]  # copies sharing a slot come in random order
    order = np.argsort(np.r_[np.arange(len(documents)), slots - 0.5], kind="stable")
    merged = documents + copies
    return [merged[i] for i in order]


def all_secrets(digits: int) -> list[str]:
    """Every secret of ``digits`` digits, in order: the whole candidate space R, |R| = 10**digits.

    >>> all_secrets(1)[:3], len(all_secrets(3))
    (['0', '1', '2'], 1000)
    """
    _check_int("digits", digits, 1)
    if 10**digits > MAX_ENUMERATED:
        raise ValueError(f"digits={digits} gives 10**{digits} candidates, more than MAX_ENUMERATED={MAX_ENUMERATED}")
    return [f"{number:0{digits}d}" for number in range(10**digits)]


def secret_rank(scores: np.ndarray, true_score: float) -> int:
    """1 + the number of candidate ``scores`` (log-perplexities: lower is more likely) below ``true_score``.

    >>> secret_rank(np.array([3.0, 1.0, 2.0, 5.0]), 2.0)
    2
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"scores must be a non-empty (n,) array of finite numbers; got shape {scores.shape}")
    return 1 + int((scores < true_score).sum())


def exposure_from_rank(rank: float, space_size: int) -> float:
    """log2(space_size) - log2(rank): the bits by which the model singles out the secret among ``space_size``."""
    _check_int("space_size", space_size, 1)
    if not 1 <= rank <= space_size:
        raise ValueError(f"rank must be in [1, space_size={space_size}]; got {rank!r}")
    return math.log2(space_size) - math.log2(rank)


@dataclasses.dataclass(frozen=True)
class Exposure:
    """The exposure of one secret and how it was obtained."""

    exposure: float  # bits: log2(space_size) - log2(rank)
    rank: float  # the true secret's rank among the candidates (estimated when method == "sampled")
    space_size: int  # |R|: the number of possible secrets
    method: str  # "full": every candidate scored; "sampled": rank estimated from a uniform sample


def exposure(scores: np.ndarray, secret: str) -> Exposure:
    """The exact exposure of ``secret`` from ``scores``, the log-perplexities of *every* secret of its length in
    the order of ``all_secrets`` (``secret_log_perplexities`` computes them for a GPT).

    >>> scores = np.arange(10**4, dtype=float)          # a model that finds "0000" the likeliest
    >>> exposure(scores, "0000").exposure, exposure(scores, "0009").rank
    (13.287..., 10.0)
    """
    if not isinstance(secret, str) or not secret.isascii() or not secret.isdigit():
        raise ValueError(f"secret must be a str of the digits 0-9; got {secret!r}")
    scores = np.asarray(scores, np.float64)
    if scores.shape != (10 ** len(secret),):
        raise ValueError(f"scores must hold one log-perplexity per possible secret, shape ({10 ** len(secret)},) "
                         f"for {len(secret)} digits; got shape {scores.shape}")
    rank = secret_rank(scores, scores[int(secret)])
    return Exposure(exposure_from_rank(rank, scores.size), float(rank), scores.size, "full")


def estimated_exposure(sample_scores: np.ndarray, true_score: float, space_size: int) -> Exposure:
    """Exposure with the rank estimated from the scores of secrets drawn uniformly from a space too large to score
    whole: rank = 1 + space_size x (fraction of the sample scoring below ``true_score``).

    Carlini et al. fit a skew-normal distribution to the sample instead, which extrapolates beyond the smallest
    fraction a sample can resolve (1 / sample size); this estimate stops there.

    >>> estimated_exposure(np.array([1.0, 2.0, 3.0, 4.0]), 2.5, 10**9).rank   # half the sample scores below
    500000001.0
    """
    _check_int("space_size", space_size, 1)
    sample_scores = np.asarray(sample_scores, np.float64)
    if sample_scores.ndim != 1 or sample_scores.size == 0:
        raise ValueError(f"sample_scores must be a non-empty (n,) array; got shape {sample_scores.shape}")
    rank = min(1.0 + space_size * float((sample_scores < true_score).mean()), float(space_size))
    return Exposure(exposure_from_rank(rank, space_size), rank, space_size, "sampled")


def _context_check(model: GPT, length: int, what: str) -> None:
    if length > model.config.max_len:
        raise ValueError(f"{what} needs {length} tokens, longer than the model's context max_len="
                         f"{model.config.max_len}")


@nnx.jit
def _log_probs(model: GPT, x: jax.Array) -> jax.Array:
    """log p(next token | x[b, :t + 1]) for every token: (B, T, V), float32."""
    return jax.nn.log_softmax(model(x).astype(jnp.float32), axis=-1)


@nnx.jit
def _token_nll(model: GPT, x: jax.Array, y: jax.Array) -> jax.Array:
    """-log p(y[b, t] | x[b, :t + 1]) in nats at every position: (B, T)."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x).astype(jnp.float32), y)


def _digit_ids(tokenizer: BPETokenizer) -> tuple[int, np.ndarray]:
    """The id of " " and of each digit 0-9, checking that the tokenizer writes a secret one character per token."""
    space, digit_ids = tokenizer.encode_ordinary(" "), tokenizer.encode_ordinary("0123456789")
    probe = tokenizer.encode_ordinary(" 9081726354")
    if len(space) != 1 or len(digit_ids) != 10 or len(probe) != 11:
        raise ValueError("tokenizer must cut numbers into single digits and keep the space before them apart; "
                         "train it with pattern=labkit.privacy.DIGIT_PATTERN")
    return int(space[0]), np.asarray(digit_ids)


def canary_ids(tokenizer: BPETokenizer, canary: Canary) -> np.ndarray:
    """The canary's token ids: the prefix's, then " ", then one id per digit."""
    space, digit_ids = _digit_ids(tokenizer)
    return np.r_[tokenizer.encode_ordinary(canary.prefix), space, digit_ids[[int(d) for d in canary.secret]]]


def secret_log_perplexities(model: GPT, tokenizer: BPETokenizer, prefix: str, *, digits: int,
                            batch_size: int = 1000) -> np.ndarray:
    """-log2 p(" " + s | prefix) under ``model`` for every secret s of ``digits`` digits: (10**digits,) bits, in
    the order of ``all_secrets``.

    The tokenizer must give each digit its own token (``DIGIT_PATTERN``). Then one forward pass over prefix + " " +
    the first digits - 1 digits gives the probability of every last digit at once: 10**(digits - 1) sequences
    score all 10**digits secrets.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.gpt.GPT; got {type(model).__name__}")
    _check_int("digits", digits, 1)
    _check_int("batch_size", batch_size, 1)
    all_secrets(digits)  # checks that the space can be enumerated
    space, digit_ids = _digit_ids(tokenizer)
    prefix_ids = tokenizer.encode_ordinary(prefix)
    if prefix_ids.size == 0:
        raise ValueError("prefix is empty; expected the text before the secret")
    _context_check(model, len(prefix_ids) + 1 + digits, f"a canary of prefix {prefix!r} and {digits} digits")
    places = 10 ** np.arange(digits - 2, -1, -1)  # (digits - 1,): 100, 10, 1 for 4 digits
    heads = np.arange(10 ** (digits - 1))[:, None] // places % 10  # (R / 10, digits - 1): all digits but the last
    rows = np.c_[np.broadcast_to(np.r_[prefix_ids, space], (len(heads), len(prefix_ids) + 1)),
                 digit_ids[heads]].astype(np.int32)  # (R / 10, P + digits)
    width = min(_padded(rows.shape[1]), model.config.max_len)  # padding after the rows changes none of their logits
    rows = np.pad(rows, ((0, 0), (0, width - rows.shape[1])))
    end = len(prefix_ids) + digits  # the real columns of each row
    first = len(prefix_ids) - 1  # the position whose next token is the space
    out = []
    for i in range(0, len(rows), batch_size):
        x = rows[i : i + batch_size]  # (B, width)
        log_p = np.asarray(_log_probs(model, jnp.asarray(x)))[:, first:end]  # (B, digits + 1, V)
        targets = x[:, first + 1 : end]  # (B, digits): the space and the first digits - 1 digits
        known = np.take_along_axis(log_p[:, :-1], targets[:, :, None], axis=2)[:, :, 0].sum(axis=1)  # (B,)
        last = log_p[:, -1, digit_ids]  # (B, 10): every possible last digit
        out.append(known[:, None] + last)
    return -np.concatenate(out).reshape(-1) / math.log(2)


def extracted(model: GPT, tokenizer: BPETokenizer, canaries: Sequence[Canary]) -> np.ndarray:
    """For each canary, whether greedy decoding from its prefix writes " " + its secret: (n,) bool.

    That holds when at each of those positions the most likely next token is the secret's own, given the tokens
    before it; with one token per digit and per space, no other token sequence decodes to that text, so this is
    what ``labkit.generate.generate(..., temperature=0)`` writes. One padded forward pass scores every canary.
    """
    if not canaries or not all(isinstance(canary, Canary) for canary in canaries):
        raise ValueError("canaries must be a non-empty sequence of labkit.privacy.Canary")
    rows = [canary_ids(tokenizer, canary) for canary in canaries]
    width = _padded(max(len(ids) for ids in rows))
    for canary, ids in zip(canaries, rows, strict=True):
        _context_check(model, len(ids), f"canary {canary.text!r}")
    batch = np.zeros((len(rows), min(width, model.config.max_len)), np.int32)  # (n, T): padded after each canary
    for i, ids in enumerate(rows):
        batch[i, : len(ids) - 1] = ids[:-1]
    greedy = np.asarray(_log_probs(model, jnp.asarray(batch))).argmax(axis=-1)  # (n, T)
    found = []
    for i, (canary, ids) in enumerate(zip(canaries, rows, strict=True)):
        start = len(ids) - len(canary.secret) - 2  # the position whose next token is the space
        found.append(np.array_equal(greedy[i, start : len(ids) - 1], ids[start + 1 :]))
    return np.array(found)


def _padded(length: int) -> int:
    """``length`` rounded up to a multiple of 8, so that inputs of nearby lengths share one compiled program."""
    return -(-length // 8) * 8


def document_losses(model: GPT, documents: Sequence[np.ndarray], *, batch_size: int = 64) -> np.ndarray:
    """Each document's mean next-token loss (nats) under ``model``, over its first ``max_len + 1`` tokens: the
    score of a loss-threshold membership attack (Yeom et al. 2018). Documents need at least 2 tokens."""
    _check_int("batch_size", batch_size, 1)
    if len(documents) == 0:
        raise ValueError("documents is empty; expected token-id arrays of at least 2 tokens each")
    width = model.config.max_len + 1
    lengths = np.array([min(len(doc), width) for doc in documents])
    if lengths.min() < 2:
        raise ValueError(f"every document needs at least 2 tokens; document {int(lengths.argmin())} has "
                         f"{int(lengths.min())}")
    rows = np.zeros((len(documents), width), np.int32)  # (n, T + 1), padded with id 0
    for i, doc in enumerate(documents):
        rows[i, : lengths[i]] = np.asarray(doc)[: lengths[i]]
    counted = np.arange(width - 1)[None, :] < (lengths[:, None] - 1)  # (n, T)
    nll = np.concatenate([np.asarray(_token_nll(model, jnp.asarray(rows[i : i + batch_size, :-1]),
                                                jnp.asarray(rows[i : i + batch_size, 1:])))
                          for i in range(0, len(rows), batch_size)])
    return (nll * counted).sum(axis=1) / counted.sum(axis=1)


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """ROC AUC of the loss-threshold attack "lower loss = member": 0.5 is chance, 1.0 a perfect attack.

    >>> membership_auc(np.array([0.5, 1.0]), np.array([2.0, 0.8]))   # 3 of the 4 pairs are ordered right
    0.75
    """
    members, others = np.asarray(member_losses, np.float64), np.asarray(nonmember_losses, np.float64)
    for name, losses in (("member_losses", members), ("nonmember_losses", others)):
        if losses.ndim != 1 or losses.size == 0:
            raise ValueError(f"{name} must be a non-empty (n,) array; got shape {losses.shape}")
    labels = np.r_[np.ones(members.size), np.zeros(others.size)]
    return roc_auc(labels, -np.r_[members, others])
