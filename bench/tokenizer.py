"""BPE side by side: training time and encode throughput of labkit, tiktoken and Hugging Face tokenizers.

tiktoken encodes with labkit's own merges (it has no trainer); Hugging Face trains its own byte-level BPE on the same
corpus with the same vocabulary size. Every library runs on one thread (tokenizers' RAYON_NUM_THREADS=1 unless
--threads says otherwise), on the whole corpus as one string. "MB/s 1st" is the first encode pass, "best of N" the
fastest of N more; labkit's later passes find every pre-token in its cache, so that column is its best case.

    python bench/tokenizer.py                                  # pydoc, V = 4096: about 10 s
    python bench/tokenizer.py --corpus pydoc stdlib --max-files 300
    python bench/tokenizer.py --stream 1 2 4 8                 # streaming encode's peak memory, input 1x..8x

--stream writes the corpus repeated 1, 2, 4, ... times to a temporary file and measures, with tracemalloc, the peak
memory that Python allocates while ``encode_stream`` reads and encodes it (the ids are counted, not kept) and while
``encode`` encodes the same text held in memory. Streaming's peak should stay flat as the input grows.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _best_of(repeats: int, function, *args) -> float:
    return min(_timed(function, *args)[1] for _ in range(repeats))


def bench_labkit(text: str, vocab_size: int, repeats: int) -> dict:
    from labkit.bpe import BPETokenizer

    tok, train_s = _timed(BPETokenizer.train, text, vocab_size, special_tokens=["<|endoftext|>"])
    fresh = BPETokenizer(tok.merges, special_tokens=tok.special_tokens)  # an empty pre-token cache
    ids, first_s = _timed(fresh.encode_ordinary, text)
    return {"name": "labkit", "tok": tok, "ids": ids.tolist(), "train_s": train_s, "first_s": first_s,
            "best_s": _best_of(repeats, fresh.encode_ordinary, text)}


def bench_tiktoken(text: str, labkit_tok, repeats: int) -> dict:
    import tiktoken

    from labkit.bpe import GPT2_PATTERN

    encoding = tiktoken.Encoding(name="labkit", pat_str=GPT2_PATTERN, mergeable_ranks=labkit_tok.mergeable_ranks,
                                 special_tokens=labkit_tok.special_tokens)
    ids, first_s = _timed(encoding.encode_ordinary, text)
    return {"name": f"tiktoken {tiktoken.__version__} (labkit's merges)", "ids": ids, "train_s": None,
            "first_s": first_s, "best_s": _best_of(repeats, encoding.encode_ordinary, text)}


def bench_huggingface(text: str, vocab_size: int, repeats: int) -> dict:
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's expression, GPT-2's byte map
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    _, train_s = _timed(tok.train_from_iterator, [text], trainer)
    encoding, first_s = _timed(tok.encode, text)
    assert tok.decode(encoding.ids) == text, "Hugging Face ByteLevel BPE did not round-trip the corpus"
    return {"name": f"HF tokenizers {tokenizers.__version__}", "hf": tok, "ids": encoding.ids, "train_s": train_s,
            "first_s": first_s, "best_s": _best_of(repeats, tok.encode, text)}


def shared_tokens(labkit_tok, hf_tok) -> float:
    """The fraction of labkit's merged tokens that Hugging Face's trainer also made."""
    from labkit.bpe import gpt2_bytes_to_unicode

    to_byte = {char: b for b, char in gpt2_bytes_to_unicode().items()}
    hf = {bytes(to_byte[c] for c in token) for token in hf_tok.get_vocab() if token != "<|endoftext|>"}
    ours = labkit_tok.vocab[256 : 256 + len(labkit_tok.merges)]
    return sum(token in hf for token in ours) / max(len(ours), 1)


def run(corpus: str, text: str, vocab_size: int, repeats: int) -> None:
    n_bytes = len(text.encode("utf-8"))
    print(f"\n{corpus}: {len(text):,} characters, {n_bytes / 1e6:.2f} MB of UTF-8; vocab_size {vocab_size}")
    ours = bench_labkit(text, vocab_size, repeats)
    rows = [ours, bench_tiktoken(text, ours["tok"], repeats), bench_huggingface(text, vocab_size, repeats)]
    header = (f"{'tokenizer':<34} {'train s':>8} {'MB/s 1st':>9} {f'best of {repeats}':>10} {'tokens':>10} "
              f"{'bytes/tok':>9}")
    print(header + "\n" + "-" * len(header))
    for row in rows:
        train = "-" if row["train_s"] is None else f"{row['train_s']:.2f}"
        first, best = n_bytes / row["first_s"] / 1e6, n_bytes / row["best_s"] / 1e6
        print(f"{row['name']:<34} {train:>8} {first:>9.2f} {best:>10.2f} {len(row['ids']):>10,} "
              f"{n_bytes / len(row['ids']):>9.2f}")
    print(f"tiktoken ids identical to labkit's: {rows[1]['ids'] == ours['ids']}; "
          f"labkit's merged tokens also made by HF: {shared_tokens(ours['tok'], rows[2]['hf']):.1%}")


def _peak_mib(function, *args, **kwargs) -> tuple[object, float]:
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def stream_memory(corpus: str, text: str, vocab_size: int, repeats: list[int], chunk_chars: int) -> None:
    """Peak traced memory of encode_stream (a file) and of encode (a str) as the input grows."""
    from labkit.bpe import BPETokenizer

    tok = BPETokenizer.train(text, vocab_size)
    print(f"\n{corpus}: streaming encode, chunk_chars={chunk_chars:,}, vocab_size {vocab_size}")
    header = f"{'copies':>6} {'input MB':>9} {'stream peak MiB':>16} {'encode peak MiB':>16} {'same count':>11}"
    print(header + "\n" + "-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.txt"
        for n in repeats:
            path.write_text(text * n, encoding="utf-8", newline="")
            fresh = BPETokenizer(tok.merges)  # an empty pre-token cache for each measurement
            count = lambda fresh=fresh: sum(len(ids) for ids in fresh.encode_stream(path, chunk_chars=chunk_chars))  # noqa: E731
            streamed, stream_peak = _peak_mib(count)
            whole = text * n  # the file's text, allocated before tracing starts: a corpus already in memory
            fresh = BPETokenizer(tok.merges)
            ids, encode_peak = _peak_mib(fresh.encode_ordinary, whole)
            print(f"{n:>6} {path.stat().st_size / 1e6:>9.2f} {stream_peak:>16.1f} {encode_peak:>16.1f} "
                  f"{streamed == len(ids)!s:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", choices=["pydoc", "stdlib"], default=["pydoc"])
    parser.add_argument("--max-files", type=int, default=300, help="stdlib: first N files (0 = all, ~11 MB)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="encode passes; the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="threads for Hugging Face tokenizers")
    parser.add_argument("--stream", type=int, nargs="+", metavar="COPIES",
                        help="measure streaming encode's peak memory on the corpus repeated COPIES times instead")
    parser.add_argument("--chunk-chars", type=int, default=1 << 16, help="--stream: characters read at a time")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # read when tokenizers starts its thread pool
    from labkit import data

    for corpus in args.corpus:
        options = {"max_files": args.max_files or None} if corpus == "stdlib" else {}
        if args.stream:
            stream_memory(corpus, data.load(corpus, **options), args.vocab_size, args.stream, args.chunk_chars)
        else:
            run(corpus, data.load(corpus, **options), args.vocab_size, args.repeats)


if __name__ == "__main__":
    main()
