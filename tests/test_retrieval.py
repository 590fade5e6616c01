import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.bpe import BPETokenizer
from labkit.gpt import GPT, GPTConfig
from labkit.retrieval import BM25, embed, rag_prompt, rank, recall_at_k, retrieval_accuracy, top_k

# A larger initial scale than training would use, so that hidden states differ clearly from text to text.
CONFIG = GPTConfig(vocab_size=256, max_len=16, num_layers=2, num_heads=2, width=16, mlp_width=32, init_std=0.3)
MODEL = GPT(CONFIG, rngs=nnx.Rngs(0))
TOKENIZER = BPETokenizer([])  # one token per byte
TEXTS = ["for loops", "The while statement repeats", "x", "assert expression, message"]


@nnx.jit
def hidden(model, tokens):
    return model.hidden(tokens)


def reference_embedding(text, max_len=CONFIG.max_len):
    """Mean of model.hidden over the text's tokens, chunk by chunk, no padding and no batching; unit length."""
    ids = TOKENIZER.encode(text)
    total = sum(np.asarray(hidden(MODEL, jnp.asarray(ids[None, s : s + max_len])))[0].sum(0)
                for s in range(0, len(ids), max_len))
    mean = total / len(ids)
    return mean / np.linalg.norm(mean)


def test_embed_shape_and_unit_norm():
    vectors = embed(MODEL, TOKENIZER, TEXTS)
    assert vectors.shape == (4, CONFIG.width) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_embed_is_the_mean_hidden_state():
    vectors = embed(MODEL, TOKENIZER, TEXTS, batch_size=3)
    for text, vector in zip(TEXTS, vectors, strict=True):
        np.testing.assert_allclose(vector, reference_embedding(text), atol=1e-5)


def test_padding_does_not_change_an_embedding():
    alone = embed(MODEL, TOKENIZER, ["x"])[0]  # one token, padded to the shortest bucket
    padded = embed(MODEL, TOKENIZER, ["x", "a much longer text....", "yz"], batch_size=3)[0]  # padded in a batch
    np.testing.assert_allclose(alone, padded, atol=1e-5)
    assert not np.allclose(padded, embed(MODEL, TOKENIZER, ["yz"])[0], atol=1e-3)  # texts do differ


def test_long_text_is_chunked_and_token_weighted():
    text = "a text of forty bytes, longer than 16..."  # 40 tokens: chunks of 16, 16 and 8
    np.testing.assert_allclose(embed(MODEL, TOKENIZER, [text])[0], reference_embedding(text), atol=1e-5)
    np.testing.assert_allclose(embed(MODEL, TOKENIZER, [text], max_len=8)[0], reference_embedding(text, 8), atol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: embed(MODEL, TOKENIZER, []), "texts is empty"),
    (lambda: embed(MODEL, TOKENIZER, "one str"), "sequence of str"),
    (lambda: embed(MODEL, TOKENIZER, ["ok", ""]), r"texts\[1\] has no tokens"),
    (lambda: embed(MODEL, TOKENIZER, ["ok"], max_len=17), r"max_len must be an int in \[1, 16\]"),
    (lambda: embed(MODEL, TOKENIZER, ["ok"], batch_size=0), "batch_size must be a positive int"),
    (lambda: embed("model", TOKENIZER, ["ok"]), "model must be a labkit.gpt.GPT"),
    (lambda: embed(MODEL, object(), ["ok"]), "tokenizer must have an encode"),
])
def test_embed_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@settings(max_examples=10, deadline=None)  # each new shape compiles once
@given(q=st.integers(1, 5), m=st.integers(1, 30), d=st.integers(1, 6), data=st.data())
def test_top_k_equals_brute_force_argsort(q, m, d, data):
    k = data.draw(st.integers(1, m))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    queries, docs = rng.normal(size=(q, d)), rng.normal(size=(m, d)) * rng.uniform(0.5, 3, size=(m, 1))
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        docs / np.linalg.norm(docs, axis=1, keepdims=True)).T  # (Q, M)
    expected = np.argsort(-cosine, axis=1, kind="stable")[:, :k]
    indices, scores = top_k(queries, docs, k)
    assert indices.shape == scores.shape == (q, k)
    np.testing.assert_allclose(scores, np.take_along_axis(cosine, expected, axis=1), atol=1e-5)
    gaps = np.diff(np.sort(cosine, axis=1), axis=1)
    if gaps.size == 0 or gaps.min() > 1e-5:  # no near-ties, so the order is unique
        np.testing.assert_array_equal(indices, expected)


@pytest.mark.parametrize("args,match", [
    ((np.ones((2, 3)), np.ones((0, 3)), 1), "doc_vectors is empty"),
    ((np.ones((2, 3)), np.ones((4, 2)), 1), "same width D; got 3 and 2"),
    ((np.ones((2, 3)), np.ones((4, 3)), 0), r"k must be an int in \[1, 4\]"),
    ((np.ones((2, 3)), np.ones((4, 3)), 5), r"k must be an int in \[1, 4\]"),
    ((np.ones(3), np.ones((4, 3)), 1), "query_vectors must be a 2-D float array"),
    ((np.ones((2, 3)), np.array([[1.0, 0, 0], [0, 0, 0]]), 1), "doc_vectors row 1 has norm 0"),
])
def test_top_k_errors(args, match):
    with pytest.raises(ValueError, match=match):
        top_k(*args)


def test_retrieval_accuracy_and_recall_by_hand():
    retrieved = np.array([[3, 1, 0], [4, 2, 9], [7, 8, 5]])
    relevant = [1, {4, 5}, [5, 6, 2, 7]]
    # @1: query 0 misses (3), query 1 hits (4), query 2 hits (7) -> 2/3.
    assert retrieval_accuracy(retrieved, relevant, k=1) == pytest.approx(2 / 3)
    assert retrieval_accuracy(retrieved, relevant) == 1.0  # k = 3: query 0 finds 1 at rank 2
    # recall@1: 0, 1/2, 1/4 -> 0.25; recall@3: 1, 1/2, 2/4 -> 2/3.
    assert recall_at_k(retrieved, relevant, k=1) == pytest.approx(0.25)
    assert recall_at_k(retrieved, relevant, k=3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("args,match", [
    ((np.array([[1, 2]]), [1, 2]), "one entry per query, 1; got 2"),
    ((np.array([[1, 2]]), [set()]), r"relevant\[0\] is empty"),
    ((np.array([[1, 2]]), [1], 3), r"k must be an int in \[1, 2\]"),
    ((np.array([[1, 2]]), [1], 0), r"k must be an int in \[1, 2\]"),
    ((np.array([[1.0, 2.0]]), [1]), "retrieved must be a 2-D int array"),
    ((np.zeros((0, 2), int), []), "retrieved must be a 2-D int array"),
])
def test_retrieval_metric_errors(args, match):
    for metric in (retrieval_accuracy, recall_at_k):
        with pytest.raises(ValueError, match=match):
            metric(*args)


def test_rag_prompt_keeps_the_question_and_cuts_the_passage():
    question, passage = "What is x?", "A passage of some forty bytes of text...."
    full = rag_prompt(TOKENIZER, question, passage, max_tokens=100)
    assert TOKENIZER.decode(full[0]) == f"{passage}\n\n{question}\n"
    cut = rag_prompt(TOKENIZER, question, passage, max_tokens=20)
    assert cut.shape == (1, 20) and TOKENIZER.decode(cut[0]) == f"{passage[:7]}\n\n{question}\n"
    alone = rag_prompt(TOKENIZER, question, max_tokens=20)
    assert TOKENIZER.decode(alone[0]) == f"{question}\n" and alone.dtype == np.int32
    with pytest.raises(ValueError, match="the question alone takes 13 tokens"):
        rag_prompt(TOKENIZER, question, passage, max_tokens=12)
    with pytest.raises(ValueError, match="question must be a non-empty str"):
        rag_prompt(TOKENIZER, "  ", passage, max_tokens=20)


# ---- BM25 --------------------------------------------------------------------------------------------------------

DOCS = ["the for statement iterates over a sequence", "the while statement repeats while a condition holds",
        "for for for", "lists and tuples are sequences"]


def test_bm25_by_hand():
    """Query "for" against DOCS with k1 = 1.5, b = 0.75, worked out on paper."""
    bm25 = BM25(DOCS, k1=1.5, b=0.75)
    lengths = np.array([7, 8, 3, 5])  # words per document
    avgdl = lengths.mean()  # 5.75
    idf = np.log(1 + (4 - 2 + 0.5) / (2 + 0.5))  # "for" is in 2 of 4 documents: log 2
    tf = np.array([1, 0, 3, 0])
    expected = idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * lengths / avgdl))
    np.testing.assert_allclose(bm25.scores(["for"])[0], expected, rtol=1e-12)
    assert bm25.idf("for") == pytest.approx(np.log(2)) and bm25.idf("absent") == pytest.approx(np.log(1 + 4.5 / 0.5))


def test_bm25_properties():
    bm25 = BM25(DOCS)
    scores = bm25.scores(["while condition", "nothing shared", "FOR, for!"])
    assert scores.shape == (3, 4) and scores.dtype == np.float64
    assert rank(scores, 1)[0, 0] == 1 and (scores[0, [0, 2, 3]] == 0).all()  # only document 1 has these words
    assert (scores[1] == 0).all()  # no word in common: every score 0
    assert scores[2, 2] > scores[2, 0] > 0  # more occurrences score higher (case and punctuation ignored) ...
    assert scores[2, 2] < 3 * scores[2, 0]  # ... but saturate: three times the count is less than three times the score
    # A repeated query word counts twice; b = 0 ignores length, b = 1 normalizes by it fully.
    np.testing.assert_allclose(bm25.scores(["for for"])[0], 2 * bm25.scores(["for"])[0])
    long_doc, short_doc = "x for " + "y " * 20, "x for"
    no_length = BM25([long_doc, short_doc], b=0.0).scores(["for"])[0]
    assert no_length[0] == pytest.approx(no_length[1])
    scores = BM25([long_doc, short_doc], b=1.0).scores(["for"])
    assert scores[0, 1] > scores[0, 0]


def test_bm25_equals_a_brute_force_formula():
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(12)]
    docs = [" ".join(rng.choice(vocabulary, size=rng.integers(1, 15))) for _ in range(30)]
    queries = [" ".join(rng.choice(vocabulary, size=rng.integers(1, 4))) for _ in range(10)]
    bm25 = BM25(docs, k1=1.2, b=0.6)
    tokens = [d.split() for d in docs]
    avgdl = np.mean([len(t) for t in tokens])
    expected = np.zeros((len(queries), len(docs)))
    for q, query in enumerate(queries):
        for term in query.split():
            df = sum(term in t for t in tokens)
            idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            for d, t in enumerate(tokens):
                tf = t.count(term)
                expected[q, d] += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.6 + 0.6 * len(t) / avgdl))
    np.testing.assert_allclose(bm25.scores(queries), expected, rtol=1e-12)


def test_rank_breaks_ties_like_top_k():
    scores = np.array([[1.0, 3.0, 3.0, 0.0]])
    assert rank(scores, 3).tolist() == [[1, 2, 0]]
    vectors = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # cosines with (1, 0): 0, 1, 1, -1
    assert top_k(np.array([[1.0, 0.0]]), vectors, 3)[0].tolist() == rank(np.array([[0.0, 1.0, 1.0, -1.0]]), 3).tolist()


@pytest.mark.parametrize("call,match", [
    (lambda: BM25([]), "documents must be a non-empty sequence"),
    (lambda: BM25("one str"), "documents must be a non-empty sequence"),
    (lambda: BM25(DOCS, k1=-1.0), r"k1 must be a number in \[0, inf\]"),
    (lambda: BM25(DOCS, b=1.5), r"b must be a number in \[0, 1.0\]"),
    (lambda: rank(np.zeros((2, 3)), 4), r"k must be an int in \[1, 3\]"),
    (lambda: rank(np.zeros(3), 1), "scores must be a 2-D numeric array"),
])
def test_bm25_and_rank_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bm25_queries_must_be_strings():
    with pytest.raises(TypeError, match="queries must be a sequence of str"):
        BM25(DOCS).scores("for")
