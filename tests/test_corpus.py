"""A corpus you bring (a file or folder, LABKIT_CORPUS) or download, tokenized as a stream into a memory-mapped file."""

import hashlib
import tracemalloc

import numpy as np
import pytest

from labkit import data
from localweb import serve
from labkit.bpe import BPETokenizer
from labkit.tokens import open_tokens, write_token_stream

TEXTS = {"b.txt": "Second file.\n\nIt has two paragraphs.\n", "a.txt": "First file, ünïcode and\r\nCRLF.\n",
         "sub/c.md": "# Third\n\nin a sub-folder\n", ".hidden/x.txt": "never read", ".notes": "never read"}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode("utf-8"))
    return root


def test_corpus_files_are_sorted_and_skip_hidden_ones(corpus, monkeypatch):
    names = [p.relative_to(corpus).as_posix() for p in data.corpus_files(corpus)]
    assert names == ["a.txt", "b.txt", "sub/c.md"]
    assert data.corpus_files(corpus / "b.txt") == [corpus / "b.txt"]
    monkeypatch.setenv("LABKIT_CORPUS", str(corpus))
    assert data.corpus_files() == data.corpus_files(corpus)


def test_corpus_errors_name_the_source(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_CORPUS", raising=False)
    with pytest.raises(ValueError, match="LABKIT_CORPUS"):
        data.corpus_files()
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        data.corpus_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no files"):
        data.corpus_files(tmp_path)
    with pytest.raises(ValueError, match="chunk_chars must be a positive int"):
        next(data.read_corpus(tmp_path, chunk_chars=0))


@pytest.mark.parametrize("chunk_chars", [1, 7, 1 << 20])
def test_read_corpus_is_the_files_joined_by_a_blank_line_whatever_the_chunks(corpus, chunk_chars):
    chunks = list(data.read_corpus(corpus, chunk_chars=chunk_chars))
    assert max(len(c) for c in chunks) <= max(chunk_chars, 2)
    expected = "\n\n".join(TEXTS[n] for n in ("a.txt", "b.txt", "sub/c.md"))
    assert "".join(chunks) == expected  # line ends as stored (CRLF kept)
    assert data.corpus_head(corpus, chars=10) == expected[:10]


def test_a_streamed_corpus_has_the_ids_of_the_whole_text(corpus, tmp_path):
    text = "".join(data.read_corpus(corpus))
    tokenizer = BPETokenizer.train(text, vocab_size=300)
    path = write_token_stream(tmp_path / "corpus.npy", tokenizer.encode_stream(data.read_corpus(corpus, chunk_chars=5)),
                              vocab_size=tokenizer.vocab_size)
    ids = open_tokens(path, vocab_size=tokenizer.vocab_size)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, tokenizer.encode_ordinary(text))


def test_write_token_stream_holds_one_chunk_at_a_time(tmp_path):
    chunk, count = 50_000, 100  # 5 million ids: 20 MB as int32, 10 MB in the file

    def chunks():
        for i in range(count):
            yield np.full(chunk, i, np.int32)

    tracemalloc.start()
    try:
        path = write_token_stream(tmp_path / "big.npy", chunks(), vocab_size=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ids = open_tokens(path)
    assert ids.shape == (chunk * count,) and ids[0] == 0 and ids[-1] == count - 1
    assert peak < 3 * (1 << 20)  # a copy block (1 MB) and a few chunks (200 kB each), not the 20 MB of the stream


def test_write_token_stream_checks_ids_and_leaves_no_partial_file(tmp_path):
    with pytest.raises(ValueError, match=r"chunk 1 of chunks must be ids in \[0, 9\]"):
        write_token_stream(tmp_path / "bad.npy", [np.arange(5), np.arange(20)], vocab_size=10)
    with pytest.raises(ValueError, match="held no token ids"):
        write_token_stream(tmp_path / "empty.npy", [np.zeros(0, np.int32)], vocab_size=10)
    assert list(tmp_path.iterdir()) == []
    write_token_stream(tmp_path / "ok.npy", [np.arange(5)], vocab_size=10)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_token_stream(tmp_path / "ok.npy", [np.arange(5)], vocab_size=10)


def test_a_downloaded_corpus_is_checked_then_tokenized(tmp_path):
    """The optional download (pooch) from a server on 127.0.0.1, then the same streaming path as a local corpus."""
    payload = ("To be, or not to be, that is the question:\n" * 50).encode("utf-8")
    www = tmp_path / "www"
    www.mkdir()
    (www / "play.txt").write_bytes(payload)

    with serve(www) as url:
        remote = data.RemoteFile(url=f"{url}play.txt", sha256=hashlib.sha256(payload).hexdigest(),
                                 filename="play.txt")
        path = data.fetch(remote, cache=tmp_path / "cache")
    tokenizer = BPETokenizer.train(data.corpus_head(path, chars=500), vocab_size=280)
    ids = open_tokens(write_token_stream(tmp_path / "play.npy", tokenizer.encode_stream(data.read_corpus(path)),
                                         vocab_size=tokenizer.vocab_size))
    np.testing.assert_array_equal(ids, tokenizer.encode_ordinary(payload.decode("utf-8")))
