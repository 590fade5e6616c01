"""labkit.labeled: deterministic per seed, split by file, no snippet on both sides, encodings, errors."""

import numpy as np
import pytest

from labkit.bpe import BPETokenizer
from labkit.data import ArrayData
from labkit.labeled import Snippets, balanced_subset, code_snippets, docstring_pairs, encode_snippets, split_by_file

PACKAGES = ("json", "email", "wsgiref")  # small packages keep the test fast


def _key(text):
    return "\n".join(row.strip() for row in text.splitlines() if row.strip())


def test_deterministic_per_seed_and_split_by_file():
    train, test = code_snippets(packages=PACKAGES, per_class=50, seed=3)
    again_train, again_test = code_snippets(packages=PACKAGES, per_class=50, seed=3)
    assert train.texts == again_train.texts and train.files == again_train.files
    np.testing.assert_array_equal(train.labels, again_train.labels)
    assert test.texts == again_test.texts
    other_train, _ = code_snippets(packages=PACKAGES, per_class=50, seed=4)
    assert other_train.texts != train.texts
    assert set(train.files).isdisjoint(test.files)
    assert {_key(t) for t in train.texts}.isdisjoint(_key(t) for t in test.texts)  # no snippet on both sides
    assert train.classes == PACKAGES and set(np.unique(train.labels)) == {0, 1, 2}
    for label, file in zip(train.labels, train.files, strict=True):
        assert file.split("/")[0] == PACKAGES[label]
    assert max(np.bincount(train.labels)) <= 50


def test_docstring_pairs_split_by_file():
    train, test = docstring_pairs(packages=PACKAGES, seed=0)
    assert train and test and train == docstring_pairs(packages=PACKAGES, seed=0)[0]
    assert {doc for doc, _ in train}.isdisjoint(doc for doc, _ in test)
    assert all(name.isidentifier() and not name.startswith("_") for _, name in train + test)


def test_encode_and_balanced_subset():
    train, _ = code_snippets(packages=PACKAGES, per_class=20, seed=0)
    tokenizer = BPETokenizer.train("\n".join(train.texts), vocab_size=300)
    data = encode_snippets(train, tokenizer, seq_len=16, pad_id=0)
    assert data.x.shape == (len(train), 16) and data.x.dtype == np.int32
    first = tokenizer.encode_ordinary(train.texts[0])[:16]
    np.testing.assert_array_equal(data.x[0, : len(first)], first)
    assert (data.x[0, len(first):] == 0).all() and data.target_names == PACKAGES
    small = balanced_subset(data, 7, seed=1)
    assert len(small) == 7 and sorted(np.bincount(small.y, minlength=3)) == [2, 2, 3]
    np.testing.assert_array_equal(small.x, balanced_subset(data, 7, seed=1).x)
    rows = {tuple(r) for r in data.x}
    assert all(tuple(r) in rows for r in small.x)


def test_errors():
    with pytest.raises(ValueError, match="packages"):
        code_snippets(packages=("json",))
    with pytest.raises(ValueError, match="distinct"):
        code_snippets(packages=("json", "json"))
    with pytest.raises(ValueError, match="'nonexistent_pkg' has 0"):
        code_snippets(packages=("json", "nonexistent_pkg"))
    with pytest.raises(ValueError, match="test_fraction"):
        code_snippets(packages=PACKAGES, test_fraction=1.0)
    with pytest.raises(ValueError, match="seed"):
        code_snippets(packages=PACKAGES, seed=-1)
    for name in ("lines", "min_chars", "per_class"):
        with pytest.raises(ValueError, match=name):
            code_snippets(packages=PACKAGES, **{name: 0})
    with pytest.raises(ValueError, match="max_chars"):
        docstring_pairs(packages=PACKAGES, max_chars=5)
    snippets = Snippets(texts=("ab", "a\x00"), labels=np.array([0, 1], np.int32), files=("x", "y"), classes=("p", "q"))
    tokenizer = BPETokenizer.train("ab", vocab_size=256)
    with pytest.raises(TypeError, match="snippets"):
        encode_snippets(["ab"], tokenizer, seq_len=4, pad_id=0)
    with pytest.raises(ValueError, match="seq_len"):
        encode_snippets(snippets, tokenizer, seq_len=0, pad_id=0)
    with pytest.raises(ValueError, match="pad_id"):
        encode_snippets(snippets, tokenizer, seq_len=4, pad_id=-1)
    with pytest.raises(ValueError, match="pad_id 0"):
        encode_snippets(snippets, tokenizer, seq_len=4, pad_id=0)
    data = ArrayData(np.zeros((4, 2), np.int32), np.array([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="data"):
        balanced_subset(data.x, 2, seed=0)
    with pytest.raises(ValueError, match="n must"):
        balanced_subset(data, 5, seed=0)
    with pytest.raises(ValueError, match="seed"):
        balanced_subset(data, 2, seed=-1)


def test_split_by_file_keeps_every_file_on_one_side():
    train, _ = code_snippets(packages=PACKAGES, per_class=60, seed=0)
    kept, held = split_by_file(train, fraction=0.3, seed=1)
    assert len(kept) + len(held) == len(train) and set(kept.files).isdisjoint(held.files)
    assert sorted(kept.texts + held.texts) == sorted(train.texts)
    assert set(held.labels.tolist()) == set(kept.labels.tolist()) == {0, 1, 2}  # every class on both sides
    for part in (kept, held):
        for text, label, file in zip(part.texts, part.labels, part.files, strict=True):
            i = train.texts.index(text)
            assert train.labels[i] == label and train.files[i] == file and part.classes == train.classes
    again = split_by_file(train, fraction=0.3, seed=1)
    assert again[1].texts == held.texts and split_by_file(train, fraction=0.3, seed=2)[1].texts != held.texts


def test_split_by_file_errors():
    one_file = Snippets(texts=("a", "b", "c"), labels=np.array([0, 0, 1]), files=("x.py", "x.py", "y.py"),
                        classes=("p", "q"))
    with pytest.raises(ValueError, match="class 'p' has snippets from 1 file"):
        split_by_file(one_file, fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="fraction must be a number strictly between 0 and 1"):
        split_by_file(one_file, fraction=1.0, seed=0)
    with pytest.raises(TypeError, match="snippets must be a Snippets"):
        split_by_file(["a"], fraction=0.5, seed=0)
