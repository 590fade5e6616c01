"""Dense retrieval with a pretrained GPT: embed texts, find the nearest passages, score the retrieval (chapter 5).

A text's embedding is the mean of the GPT's final hidden states (``GPT.hidden``) over its real tokens, scaled to unit
length. Texts are padded at the end to a common length inside a batch; a padding mask keeps the padding out of
attention and out of the mean, so a text's embedding does not depend on its batch. A text longer than ``max_len``
tokens is cut into consecutive chunks of at most ``max_len`` tokens, each embedded on its own, and its embedding is the
mean over all its tokens (so each chunk weighs by its number of tokens); nothing is dropped.

>>> doc_vectors = embed(model, tokenizer, passages)              # (M, D), unit rows  # doctest: +SKIP
>>> query_vectors = embed(model, tokenizer, questions)           # (Q, D)  # doctest: +SKIP
>>> indices, scores = top_k(query_vectors, doc_vectors, k=5)     # (Q, 5) each: best passage first  # doctest: +SKIP
>>> retrieval_accuracy(indices, relevant, k=1)  # fraction of questions whose top passage is right  # doctest: +SKIP
>>> prompt = rag_prompt(tokenizer, questions[0], passages[indices[0, 0]], max_tokens=192)  # doctest: +SKIP
>>> # prompt: (1, T) token ids for generate

The lexical baseline is BM25 (Robertson and Zaragoza 2009), written out here so that every term of its formula can be
read: ``BM25(passages).scores(questions)`` gives a (Q, M) matrix, and ``rank(scores, k)`` the top k of each row.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from labkit._checks import check_int
from labkit.gpt import GPT
from labkit.masks import padding_mask

__all__ = ["BM25", "PROMPT_TEMPLATE", "embed", "rag_prompt", "rank", "recall_at_k", "retrieval_accuracy", "top_k",
           "words"]

# Retrieval-augmented prompt: the retrieved passage, a blank line, the question, a new line for the model to continue.
PROMPT_TEMPLATE = "{passage}\n\n{question}\n"
_MIN_BUCKET = 16  # shortest padded length, so that short texts share one compiled shape


def _bucket(length: int, max_len: int) -> int:
    """The padded length of a batch whose longest row has ``length`` tokens: a power of two, at most ``max_len``."""
    return min(max_len, max(_MIN_BUCKET, 1 << (length - 1).bit_length()))


@nnx.jit
def _pooled_sums(model: GPT, tokens: Int[Array, "B T"], lengths: Int[Array, " B"]) -> Float[Array, "B D"]:
    """Sum of the hidden states over each row's first ``lengths[b]`` positions (the real tokens)."""
    mask = padding_mask(lengths, tokens.shape[1])  # (B, 1, 1, T): keys that are real tokens
    hidden = model.hidden(tokens, mask=mask)  # (B, T, D)
    real = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1)
    return jnp.sum(jnp.where(real, hidden.astype(jnp.float32), 0.0), axis=1)  # (B, D)


def embed(model: GPT, tokenizer: Any, texts: Sequence[str], *, max_len: int | None = None,
          batch_size: int = 32) -> Float[np.ndarray, "B D"]:
    """Unit-length embeddings (B, D), float32: each text's mean final hidden state over its tokens.

    ``tokenizer.encode(text)`` gives the ids. ``max_len`` (default: the model's) is the most tokens the model reads
    at once; longer texts are cut into chunks of ``max_len`` (see the module docstring). ``batch_size`` rows (texts
    or chunks) run at a time; rows are sorted by length and padded to a power of two, so few shapes are compiled.

    >>> embed(model, tokenizer, ["The for statement", "Lists"]).shape  # (B, D)  # doctest: +SKIP
    (2, 128)
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.gpt.GPT; got {type(model).__name__}")
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode(text) method; got {type(tokenizer).__name__}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a sequence of str (not one str); got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty; expected at least one text to embed")
    max_len = model.config.max_len if max_len is None else max_len
    check_int("max_len", max_len, maximum=model.config.max_len)
    check_int("batch_size", batch_size)

    rows: list[tuple[int, np.ndarray]] = []  # (text index, the ids of one chunk of at most max_len tokens)
    for i, text in enumerate(texts):
        ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
        if ids.size == 0:
            raise ValueError(f"texts[{i}] has no tokens (an empty text has no embedding); got {text!r}")
        rows += [(i, ids[start : start + max_len]) for start in range(0, ids.size, max_len)]
    rows.sort(key=lambda row: len(row[1]))  # neighbours in length share a padded shape

    sums = np.zeros((len(texts), model.config.width), np.float64)  # (B, D): hidden states summed over tokens
    counts = np.zeros(len(texts), np.int64)  # (B,): tokens per text
    view = nnx.view(model, deterministic=True)  # dropout off
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        lengths = np.zeros(batch_size, np.int32)  # rows past the batch's end stay empty (length 0) and are ignored
        lengths[: len(batch)] = [len(ids) for _, ids in batch]
        tokens = np.zeros((batch_size, _bucket(int(lengths.max()), max_len)), np.int32)  # (B, T), right-padded
        for r, (_, ids) in enumerate(batch):
            tokens[r, : len(ids)] = ids
        pooled = np.asarray(_pooled_sums(view, jnp.asarray(tokens), jnp.asarray(lengths)))  # (B, D)
        for r, (i, ids) in enumerate(batch):
            sums[i] += pooled[r]
            counts[i] += len(ids)
    means = sums / counts[:, None]  # (B, D)
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def _check_vectors(name: str, vectors: Any) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise ValueError(f"{name} must be a 2-D float array (rows, D); got {vectors.dtype} {vectors.shape}")
    if vectors.shape[0] == 0:
        raise ValueError(f"{name} is empty; expected at least one row")
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"{name} row {bad[0]} has norm {norms[bad[0]]}; cosine similarity needs finite, non-zero rows")
    return vectors


@functools.partial(jax.jit, static_argnames="k")
def _top_k(queries: Float[Array, "Q D"], docs: Float[Array, "M D"], k: int) -> tuple[Array, Array]:
    queries = queries / jnp.linalg.norm(queries, axis=1, keepdims=True)
    docs = docs / jnp.linalg.norm(docs, axis=1, keepdims=True)
    scores, indices = jax.lax.top_k(queries @ docs.T, k)  # (Q, M) -> (Q, k); ties: the lower index first
    return indices, scores


def top_k(query_vectors: Float[np.ndarray, "Q D"], doc_vectors: Float[np.ndarray, "M D"],
          k: int) -> tuple[Int[np.ndarray, "Q k"], Float[np.ndarray, "Q k"]]:
    """The ``k`` documents of highest cosine similarity to each query: (indices, scores), best first.

    >>> indices, scores = top_k(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [2.0, 0.1], [1.0, 1.0]]), k=2)
    >>> indices.tolist(), [round(float(s), 3) for s in scores[0]]
    ([[1, 2]], [0.999, 0.707])
    """
    queries = _check_vectors("query_vectors", query_vectors)
    docs = _check_vectors("doc_vectors", doc_vectors)
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query_vectors and doc_vectors must have the same width D; got {queries.shape[1]} and "
                         f"{docs.shape[1]}")
    check_int("k", k, maximum=docs.shape[0])
    indices, scores = _top_k(jnp.asarray(queries, jnp.float32), jnp.asarray(docs, jnp.float32), k)
    return np.asarray(indices), np.asarray(scores)


def _check_retrieved(retrieved: Any, relevant: Any, k: int | None) -> tuple[np.ndarray, list[set[int]], int]:
    retrieved = np.asarray(retrieved)
    if retrieved.ndim != 2 or retrieved.shape[0] == 0 or not np.issubdtype(retrieved.dtype, np.integer):
        raise ValueError(f"retrieved must be a 2-D int array (Q, K) of document indices, best first, with Q >= 1; "
                         f"got {retrieved.dtype} {retrieved.shape}")
    if isinstance(relevant, (str, bytes)) or not isinstance(relevant, (Sequence, np.ndarray)):
        raise TypeError(f"relevant must be a sequence with one entry per query; got {type(relevant).__name__}")
    if len(relevant) != retrieved.shape[0]:
        raise ValueError(f"relevant must have one entry per query, {retrieved.shape[0]}; got {len(relevant)}")
    sets = []
    for q, entry in enumerate(relevant):
        if isinstance(entry, (int, np.integer)):
            entry = {int(entry)}
        else:
            entry = {int(i) for i in entry}
        if not entry:
            raise ValueError(f"relevant[{q}] is empty; every query needs at least one relevant document")
        sets.append(entry)
    k = retrieved.shape[1] if k is None else k
    check_int("k", k, maximum=retrieved.shape[1])
    return retrieved[:, :k], sets, k


def retrieval_accuracy(retrieved: Int[np.ndarray, "Q K"], relevant: Sequence[int | Collection[int]],
                       k: int | None = None) -> float:
    """Top-k retrieval accuracy: the fraction of queries with at least one relevant document among the first ``k``.

    ``relevant[q]`` is the index of query q's relevant document, or a collection of them. ``k`` defaults to K. With
    one relevant document per query this is also its recall@k.

    >>> retrieval_accuracy(np.array([[3, 1], [0, 2]]), [1, {4, 5}], k=2)     # query 0 finds 1 at rank 2; query 1 misses
    0.5
    """
    retrieved, sets, _ = _check_retrieved(retrieved, relevant, k)
    return float(np.mean([bool(sets[q].intersection(row.tolist())) for q, row in enumerate(retrieved)]))


def recall_at_k(retrieved: Int[np.ndarray, "Q K"], relevant: Sequence[int | Collection[int]],
                k: int | None = None) -> float:
    """Recall@k: the fraction of each query's relevant documents found among its first ``k``, averaged over queries.

    >>> recall_at_k(np.array([[3, 1], [4, 2]]), [1, {4, 5}], k=2)            # (1/1 + 1/2) / 2
    0.75
    """
    retrieved, sets, _ = _check_retrieved(retrieved, relevant, k)
    return float(np.mean([len(sets[q].intersection(row.tolist())) / len(sets[q]) for q, row in enumerate(retrieved)]))


def rag_prompt(tokenizer: Any, question: str, passage: str | None = None, *,
               max_tokens: int) -> Int[np.ndarray, "1 T"]:
    """The token ids (1, T) of ``PROMPT_TEMPLATE`` (passage, blank line, question), ready for ``generate``.

    Without a ``passage`` the prompt is the question and its new line alone. The question is kept whole; the passage
    is cut at the end, token-wise, so that T <= ``max_tokens`` (leave room for the tokens to generate).

    >>> prompt = rag_prompt(tokenizer, "What is the for statement?", passages[7], max_tokens=192)  # doctest: +SKIP
    >>> prompt.shape[1] <= 192  # doctest: +SKIP
    True
    """
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode(text) method; got {type(tokenizer).__name__}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty str; got {question!r}")
    if passage is not None and not isinstance(passage, str):
        raise TypeError(f"passage must be a str or None; got {type(passage).__name__}")
    check_int("max_tokens", max_tokens)
    # The passage and the rest are encoded apart, so that cutting the passage never changes the question's tokens.
    rest = PROMPT_TEMPLATE.format(passage="", question=question)  # "\n\n{question}\n"
    tail = np.asarray(tokenizer.encode(rest if passage else rest.lstrip("\n")), np.int32)
    if tail.size > max_tokens:
        raise ValueError(f"max_tokens={max_tokens} is too small: the question alone takes {tail.size} tokens")
    head = np.asarray(tokenizer.encode(passage), np.int32)[: max_tokens - tail.size] if passage else tail[:0]
    return np.concatenate([head, tail])[None, :]  # (1, T)


# ---- a lexical baseline: BM25 -----------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (runs of letters, digits and underscores): BM25's terms.

    >>> words("The for-statement, e.g. FOR x in y:")
    ['the', 'for', 'statement', 'e', 'g', 'for', 'x', 'in', 'y']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    return _WORD.findall(text.lower())


class BM25:
    """Okapi BM25 over a fixed collection of ``documents`` (Robertson and Zaragoza 2009).

    The score of document d for a query q sums, over the query's words t (a repeated word counts each time),

        idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
        idf(t) = log(1 + (M - df(t) + 0.5) / (df(t) + 0.5)),

    with tf(t, d) the count of t in d, |d| the words of d, avgdl their mean over the M documents, and df(t) the
    documents that contain t. ``k1`` sets how fast repeated words saturate, ``b`` how much long documents are
    discounted. (This idf, Lucene's, is never negative; the original can be, for words in over half the documents.)

    >>> bm25 = BM25(["the for statement", "the while statement", "lists and tuples"])
    >>> rank(bm25.scores(["for loops"]), 1).tolist()
    [[0]]
    """

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75):
        if isinstance(documents, str) or not isinstance(documents, Sequence) or not documents:
            raise ValueError(f"documents must be a non-empty sequence of str; got {type(documents).__name__}")
        for name, value, upper in (("k1", k1, math.inf), ("b", b, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
                raise ValueError(f"{name} must be a number in [0, {upper}]; got {value!r}")
        self.k1, self.b = float(k1), float(b)
        counts = [Counter(words(d)) for d in documents]  # tf(t, d) per document
        self.lengths = np.array([sum(c.values()) for c in counts], np.float64)  # |d|, (M,)
        self.num_docs = len(counts)
        found: dict[str, tuple[list[int], list[int]]] = {}
        for i, count in enumerate(counts):
            for term, tf in count.items():
                found.setdefault(term, ([], []))
                found[term][0].append(i)
                found[term][1].append(tf)
        # t -> (the documents that contain t, its count in each): a query touches only its words' documents
        self.postings = {t: (np.array(d), np.array(tf, np.float64)) for t, (d, tf) in found.items()}

    def idf(self, term: str) -> float:
        """log(1 + (M - df + 0.5) / (df + 0.5)); a word no document contains gets the largest value but adds 0."""
        df = len(self.postings[term][0]) if term in self.postings else 0
        return math.log(1.0 + (self.num_docs - df + 0.5) / (df + 0.5))

    def scores(self, queries: Sequence[str]) -> Float[np.ndarray, "Q M"]:
        """The BM25 score (Q, M) of every document for every query; 0 where they share no word."""
        if (isinstance(queries, str) or not isinstance(queries, Sequence)
                or not all(isinstance(q, str) for q in queries)):
            raise TypeError(f"queries must be a sequence of str (not one str); got {type(queries).__name__}")
        mean_length = max(self.lengths.mean(), 1e-9)
        norm = self.k1 * (1.0 - self.b + self.b * self.lengths / mean_length)  # (M,)
        out = np.zeros((len(queries), self.num_docs), np.float64)
        for q, query in enumerate(queries):
            for term in words(query):
                if term in self.postings:
                    docs, tf = self.postings[term]
                    out[q, docs] += self.idf(term) * tf * (self.k1 + 1.0) / (tf + norm[docs])
        return out


def rank(scores: Float[np.ndarray, "Q M"], k: int) -> Int[np.ndarray, "Q k"]:
    """The indices of the ``k`` highest scores of each row, best first; ties go to the lower index (as ``top_k``).

    >>> rank(np.array([[0.1, 0.9, 0.5], [2.0, 0.0, 2.0]]), 2).tolist()
    [[1, 2], [0, 2]]
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] == 0 or not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"scores must be a 2-D numeric array (Q, M) with Q >= 1; got {scores.dtype} {scores.shape}")
    check_int("k", k, maximum=scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]
