import json
import os
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import data
from labkit.bpe import GPT2_PATTERN, BPETokenizer, gpt2_bytes_to_unicode

EOT, PAD = "<|endoftext|>", "<|pad|>"

# A little of other scripts, so that merges also form inside Chinese, emoji and accented words.
MULTILINGUAL = ("大型语言模型的分词器 语言模型 模型很大 😀😀 👍🏽👍🏽 👨‍👩‍👧 "
                "naïve café naïve café Ελληνικά русский язык\n") * 5

VARIED = [
    "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it? I'll say we've won.",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n\n\nclass A(B):\n\tpass\n",
    "大型语言模型会把中文切成字节，再合并。模型很大！",
    "emoji 😀👍🏽👨‍👩‍👧 and flags 🇫🇷🇯🇵, non-BMP 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 𐍈",
    "whitespace   runs\t\t\tand\n\n\n\nnewlines      \n   \r\n  trailing   ",
    "mixed: naïve café Ελληνικά русский язык עברית العربية हिन्दी 한국어",
    f"first document{EOT}second document {EOT}{EOT} third",
    "",
    " ",
    "numbers 1234567890 and 12,345.67e-10 and 1st 2nd 3rd",
]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    corpus = data.load("pydoc")[:150_000] + "\n" + MULTILINGUAL
    return BPETokenizer.train(corpus, 1024, special_tokens=[EOT, PAD])


def as_tiktoken(tok: BPETokenizer) -> tiktoken.Encoding:
    return tiktoken.Encoding(name="labkit-test", pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks,
                             special_tokens=tok.special_tokens)


# ---- hand-worked merges -----------------------------------------------------------------------------------------


def test_hand_worked_merges():
    # Pre-tokens of "low lower lowest": "low", " lower", " lowest" (each once).
    # Pair counts: (l,o) 3, (o,w) 3, (' ',l) 2, (w,e) 2, the rest 1. The tie (l,o)=(108,111) vs (o,w)=(111,119) goes
    # to the smaller pair: 256 = "lo". Then (256,w) has 3: 257 = "low".
    # Words now: [low], [' ', low, e, r], [' ', low, e, s, t]: (32,257) 2 and (257,101) 2 tie: 258 = " low".
    # Then (258,101) 2: 259 = " lowe". Left: (259,114), (259,115), (115,116), each 1: the smallest, 260 = "st".
    tok = BPETokenizer.train("low lower lowest", 261)
    assert tok.merges == ((108, 111), (256, 119), (32, 257), (258, 101), (115, 116))
    assert [tok.vocab[i] for i in range(256, 261)] == [b"lo", b"low", b" low", b" lowe", b"st"]
    assert tok.encode("lowest lowe").tolist() == [257, 101, 260, 259]  # "lowest" -> low e st; " lowe" -> 259
    # Wikipedia's example: aa -> 256 (4 times), then ab and (256, a) tie at 2: ab -> 257, then 256 257 -> 258.
    wiki = BPETokenizer.train("aaabdaaabac", 259)
    assert wiki.merges == ((97, 97), (97, 98), (256, 257))
    assert wiki.encode("aaabdaaabac").tolist() == [258, 100, 258, 97, 99]


def test_special_tokens_are_cut_out_of_training_and_numbered_after_the_merges():
    # Without the cut, "b<|x|>a" would give the pairs (b,<), (>,a) and the pre-token "<|".
    tok = BPETokenizer.train("ab<|x|>ab<|x|>ab", 260, special_tokens=["<|x|>"])
    assert tok.merges == ((97, 98),)  # (a,b) 3 times; no other pair exists, so training stops early
    assert tok.special_tokens == {"<|x|>": 257} and tok.vocab_size == 258
    assert tok.encode("ab<|x|>", allowed_special="all").tolist() == [256, 257]


# ---- round trips ------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())  # every code point but lone surrogates, non-BMP included
def test_any_text_round_trips(tok, text):
    ids = tok.encode(text, disallowed_special=())
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert tok.decode(ids, errors="strict") == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from([EOT, PAD])), max_size=8))
def test_text_with_special_tokens_round_trips(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text, allowed_special="all").tolist()
    assert tok.decode(ids) == text
    assert ids.count(tok.special_id(EOT)) == text.count(EOT)


@pytest.mark.parametrize("text", ["中文分词", "😀👍🏽👨‍👩‍👧🇫🇷", "e\u0301 ñ Å", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a中😀b\u200d\n\t "])
def test_unicode_round_trips(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids, errors="strict") == text and tok.decode_bytes(ids) == text.encode("utf-8")


@pytest.mark.parametrize("text", ["语言模型", " 😀👍🏽", " naïve café"])
def test_merges_form_inside_multibyte_characters(tok, text):
    ids = tok.encode(text)
    assert len(ids) < len(text.encode("utf-8")) and tok.decode(ids) == text  # these are in the training corpus


# ---- parity with tiktoken ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", VARIED)
def test_same_ids_as_tiktoken(tok, text):
    encoding = as_tiktoken(tok)
    assert tok.encode(text, allowed_special="all").tolist() == encoding.encode(text, allowed_special="all")
    assert tok.encode(text, disallowed_special=()).tolist() == encoding.encode(text, disallowed_special=())
    assert tok.encode_ordinary(text).tolist() == encoding.encode_ordinary(text)
    assert tok.encode(text, allowed_special={EOT}).tolist() == encoding.encode(text, allowed_special={EOT})


def test_same_ids_as_tiktoken_on_the_corpus(tok):
    text = data.load("pydoc")[150_000:250_000]  # text the tokenizer was not trained on
    assert tok.encode_ordinary(text).tolist() == as_tiktoken(tok).encode_ordinary(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "Z", "Cc", "Mn", "So"])))
def test_same_ids_as_tiktoken_on_generated_text(tok, text):
    assert tok.encode_ordinary(text).tolist() == as_tiktoken(tok).encode_ordinary(text)


# ---- special tokens and decoding policy -------------------------------------------------------------------------


def test_special_token_rules(tok):
    text = f"a{EOT}b"
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at position 1, which is disallowed"):
        tok.encode(text)
    with pytest.raises(ValueError):  # tiktoken agrees that this is an error
        as_tiktoken(tok).encode(text)
    assert tok.encode(text, allowed_special={EOT}).tolist() == [97, tok.special_id(EOT), 98]
    assert tok.encode(text, disallowed_special=()).tolist() == tok.encode_ordinary(text).tolist()
    with pytest.raises(ValueError, match=r"disallowed"):  # PAD allowed, EOT still disallowed
        tok.encode(text, allowed_special={PAD})
    with pytest.raises(ValueError, match=r"allowed_special names \['<\|unknown\|>'\], not special tokens"):
        tok.encode(text, allowed_special={"<|unknown|>"})
    with pytest.raises(ValueError, match=r"allowed_special must be 'all' or a collection"):
        tok.encode(text, allowed_special=EOT)
    with pytest.raises(ValueError, match=r"name must be a special token of this tokenizer .* got '<\|nope\|>'"):
        tok.special_id("<|nope|>")
    assert tok.decode([tok.special_id(PAD)]) == PAD
    with pytest.raises(TypeError, match="text must be a str; got bytes"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\ud800b")


def test_decoding_invalid_utf8_follows_errors(tok):
    euro = tok.encode("€").tolist()  # 3 bytes e2 82 ac; cut after the first id's bytes if it is split
    cut = [226, 130]  # the first two bytes of "€" on their own
    assert tok.decode_bytes(cut) == b"\xe2\x82"
    assert tok.decode(cut) == "\ufffd"  # the default is "replace"
    assert tok.decode(cut + euro, errors="ignore") == "€"
    assert tok.decode(cut, errors="backslashreplace") == "\\xe2\\x82"
    with pytest.raises(UnicodeDecodeError, match="not valid UTF-8; decode with errors='replace'"):
        tok.decode(cut, errors="strict")
    with pytest.raises(ValueError, match="errors must be a codec error handler .* got 'lenient'"):
        tok.decode(euro, errors="lenient")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 1023\]; got 1024 at position 1"):
        tok.decode([97, 1024])
    with pytest.raises(ValueError, match="ids must lie in"):
        tok.decode_bytes([-1])
    with pytest.raises(ValueError, match="1-D sequence of ints"):
        tok.decode([[1, 2]])
    assert tok.decode([]) == "" and tok.encode("").shape == (0,)


# ---- training ---------------------------------------------------------------------------------------------------


def test_training_errors():
    with pytest.raises(ValueError, match=r"vocab_size must be an int >= 256 .* got 255"):
        BPETokenizer.train("hello", 255)
    with pytest.raises(ValueError, match=r"vocab_size must be an int >= 257 \(256 byte tokens \+ 1 special\)"):
        BPETokenizer.train("hello", 256, special_tokens=[EOT])
    with pytest.raises(ValueError, match="text must be a non-empty str .* got an empty str"):
        BPETokenizer.train("", 300)
    with pytest.raises(ValueError, match="text must be a non-empty str .* got list"):
        BPETokenizer.train(["hello"], 300)
    with pytest.raises(ValueError, match="special_tokens must be a sequence of distinct non-empty strings"):
        BPETokenizer.train("hello", 300, special_tokens=[EOT, EOT])
    with pytest.raises(ValueError, match="text must be valid Unicode; it has a lone surrogate"):
        BPETokenizer.train("ab\ud800", 300)
    with pytest.raises(ValueError, match="pattern must be a valid regular expression"):
        BPETokenizer.train("hello", 300, pattern="[")
    with pytest.raises(ValueError, match=r"merges\[1\] must be a pair of ids, each in \[0, 256\]"):
        BPETokenizer([(97, 98), (257, 97)])  # 257 does not exist yet when merge 1 is made


def test_training_is_deterministic(tok):
    corpus = data.load("pydoc")[:150_000] + "\n" + MULTILINGUAL
    assert BPETokenizer.train(corpus, 1024, special_tokens=[EOT, PAD]) == tok
    # Another string-hash seed reorders every dict and set of pre-tokens; the merges must not change.
    script = ("import sys; from labkit.bpe import BPETokenizer; from labkit import data; "
              "print(BPETokenizer.train(data.load('pydoc')[:50_000], 400).merges)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(BPETokenizer.train(data.load("pydoc")[:50_000], 400).merges)


# ---- files ------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded == tok and loaded.vocab == tok.vocab
    for text in VARIED:
        assert loaded.encode(text, allowed_special="all").tolist() == tok.encode(text, allowed_special="all").tolist()
    content = json.loads(path.read_text())
    assert content["special_tokens"] == {EOT: 1022, PAD: 1023} and content["pattern"] == GPT2_PATTERN
    assert content["merges"][0] == list(tok.merges[0])
    assert path.read_text().count("\n") > len(tok.merges)  # one merge a line: readable and diffable
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no file at"):
        BPETokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="must be a JSON file; it does not parse"):
        BPETokenizer.load(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format 'labkit-bpe' version 1"):
        BPETokenizer.load(bad)
    good = {"format": "labkit-bpe", "version": 1, "pattern": GPT2_PATTERN, "special_tokens": {}, "byte_ids": None}
    bad.write_text(json.dumps({**good, "merges": [[97, 98], [300, 1]]}))
    with pytest.raises(ValueError, match=r"malformed .*merges\[1\] must be a pair of ids"):
        BPETokenizer.load(bad)
    bad.write_text(json.dumps({**good, "merges": [[97, 98]], "special_tokens": {EOT: 999}}))
    with pytest.raises(ValueError, match=r"malformed .*special_tokens must have the ids right after the merges"):
        BPETokenizer.load(bad)
    bad.write_text(json.dumps({**good, "merges": [], "pattern": "(unclosed"}))
    with pytest.raises(ValueError, match="pattern must be a valid regular expression"):
        BPETokenizer.load(bad)


# ---- GPT-2's own files ------------------------------------------------------------------------------------------

# GPT-2 numbers the 256 byte tokens in the order of its byte-to-unicode map (printable bytes first), so "t" is 83,
# "h" 71 and " " (written "Ġ") 220, then merge k is 256 + k. These seven merges and <|endoftext|> are made up.
GPT2_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ c", "a t", "Ġc at"]


def write_gpt2_files(folder, merges: list[str], specials: list[str]):
    encoder = {char: i for i, char in enumerate(gpt2_bytes_to_unicode().values())}
    for line in merges:
        encoder[line.replace(" ", "")] = len(encoder)
    for name in specials:
        encoder[name] = len(encoder)
    (folder / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")
    return folder / "encoder.json", folder / "vocab.bpe"


def gpt2_tiktoken(encoder_json, vocab_bpe, monkeypatch, special_tokens) -> tiktoken.Encoding:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, cache nothing
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    return tiktoken.Encoding(name="gpt2-test", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=special_tokens)


def test_gpt2_files_hand_worked(tmp_path, monkeypatch):
    paths = write_gpt2_files(tmp_path, GPT2_MERGES, [EOT])
    tok = BPETokenizer.from_gpt2_files(*paths)
    assert tok.special_tokens == {EOT: 263} and tok.byte_ids[ord("t")] == 83 and tok.byte_ids[ord(" ")] == 220
    text = f"the cat in the hat{EOT}"
    # "the": (h,e) is the only merge -> t 257. " cat": Ġc (rank 4), at (5), Ġc+at (6) -> 262. " in": Ġ 259.
    # " the": Ġt (0), he (1), Ġt+he (2) -> 258. " hat": only at (5) -> Ġ h 261. Then <|endoftext|> 263.
    expected = [83, 257, 262, 220, 259, 258, 220, 71, 261, 263]
    assert tok.encode(text, allowed_special="all").tolist() == expected
    assert gpt2_tiktoken(*paths, monkeypatch, {EOT: 263}).encode(text, allowed_special="all") == expected
    assert tok.decode(expected) == text


def test_gpt2_files_of_a_trained_tokenizer_match_tiktoken(tok, tmp_path, monkeypatch):
    to_char = gpt2_bytes_to_unicode()
    spell = lambda token: "".join(to_char[b] for b in token)  # noqa: E731
    merges = [f"{spell(tok.vocab[a])} {spell(tok.vocab[b])}" for a, b in tok.merges]
    paths = write_gpt2_files(tmp_path, merges, [EOT])
    gpt2 = BPETokenizer.from_gpt2_files(*paths)
    encoding = gpt2_tiktoken(*paths, monkeypatch, gpt2.special_tokens)
    renumber = {i: gpt2.byte_ids[i] for i in range(256)}  # same merges; only the byte ids are permuted
    for text in VARIED:
        ids = gpt2.encode(text, allowed_special="all").tolist()
        assert ids == encoding.encode(text, allowed_special="all")
        assert ids == [renumber.get(i, i) for i in tok.encode(text, allowed_special={EOT}).tolist()]
        assert gpt2.decode(ids) == text
    gpt2.save(tmp_path / "gpt2.json")
    assert BPETokenizer.load(tmp_path / "gpt2.json") == gpt2  # the permuted byte ids survive a round trip


def test_gpt2_file_errors(tmp_path):
    encoder_json, vocab_bpe = write_gpt2_files(tmp_path, GPT2_MERGES, [EOT])
    with pytest.raises(FileNotFoundError, match="vocab_bpe: no file at"):
        BPETokenizer.from_gpt2_files(encoder_json, tmp_path / "missing.bpe")
    vocab_bpe.write_text("#version: 0.2\nĠ t\nh e x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3 must be two tokens separated by a space; got 'h e x'"):
        BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    vocab_bpe.write_text("#version: 0.2\nh e\n", encoding="utf-8")  # "he" has the id 257 in encoder.json, not 256
    with pytest.raises(ValueError, match=r"line 2: GPT-2 gives merge k the id 256 \+ k = 256"):
        BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    vocab_bpe.write_text("#version: 0.2\nq z\n", encoding="utf-8")
    with pytest.raises(ValueError, match="token 'qz' is not in encoder_json"):
        BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)
    encoder_json.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold a JSON object of token -> int id"):
        BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe)


# ---- streaming encode -------------------------------------------------------------------------------------------

# Fragments that stress the cuts: whitespace runs before words (GPT-2's \s+(?!\S)), "\n\n", "\r\n", contractions cut
# after their apostrophe, special tokens cut in the middle, multi-byte characters.
FRAGMENTS = ["a", "lo", " ", "   ", "\n", "\n\n", "\r\n", "\t", "'", "ll", "s", "'ve", "1", "23", "é", "😀", "语言",
             ".", EOT, "<|end", "oftext|>", PAD, "<|", "|>"]


def cut(text: str, cuts: list[int]) -> list[str]:
    """``text`` cut at the positions ``cuts`` (any order, repeats allowed: they make empty pieces)."""
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def streamed(tok: BPETokenizer, source, **kwargs) -> list[int]:
    return [i for ids in tok.encode_stream(source, **kwargs) for i in ids.tolist()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=30),
       st.lists(st.integers(0, 10_000), max_size=12))
def test_streaming_gives_the_ids_of_the_whole_text(tok, parts, cuts):
    text = "".join(parts)
    for options in ({"allowed_special": "all"}, {"disallowed_special": ()}, {"allowed_special": {PAD},
                                                                              "disallowed_special": ()}):
        assert streamed(tok, cut(text, cuts), **options) == tok.encode(text, **options).tolist()


@pytest.mark.parametrize("chunks", [["a  ", "   b"], ["x\n", "\ny"], ["x'", "ll"], ["x'l", "l"], ["<|endo", "ftext|>"],
                                    ["a ", " ", " ", "b"], ["", "ab", "", "\n\n", ""]])
def test_streaming_across_hand_picked_cuts(tok, chunks):
    text = "".join(chunks)
    assert streamed(tok, chunks, allowed_special="all") == tok.encode(text, allowed_special="all").tolist()


def test_why_the_end_of_a_piece_is_held_back(tok):
    # A run of spaces at the end of a text is one pre-token; followed by a word, its last space joins the word.
    assert tok._regex.findall("a   ") == ["a", "   "] and tok._regex.findall("a   b") == ["a", "  ", " b"]
    assert tok._regex.findall("x'l") == ["x", "'", "l"] and tok._regex.findall("x'll") == ["x", "'ll"]


def test_streaming_a_file_reads_it_as_stored(tok, tmp_path):
    text = ("line one\r\nline two\n\n\n   indented\tcafé 😀\n" * 200) + f"{EOT}tail  "
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))  # "\r\n" kept: the ids are those of the exact bytes on disk
    for chunk_chars in (1, 7, 4096):
        assert streamed(tok, path, allowed_special="all", chunk_chars=chunk_chars) == tok.encode(
            text, allowed_special="all").tolist()


def test_streaming_is_lazy_and_holds_little_back(tok):
    import itertools

    line = "the quick brown fox  \n\n"
    first = list(itertools.islice(tok.encode_stream(itertools.repeat(line)), 50))  # an endless source
    decoded = tok.decode(np.concatenate(first))
    assert (line * 50).startswith(decoded) and len(decoded) > 49 * len(line) - 16  # only a few characters held back


def test_streaming_errors(tok):
    with pytest.raises(TypeError, match=r"got a str \(pass \[text\] to encode one text, or Path\(name\)"):
        tok.encode_stream("a text")
    with pytest.raises(TypeError, match="source must be an iterable of str or a pathlib.Path; got int"):
        tok.encode_stream(3)
    with pytest.raises(ValueError, match="chunk_chars must be a positive int; got 0"):
        tok.encode_stream(["a"], chunk_chars=0)
    with pytest.raises(TypeError, match="source must yield str pieces; got bytes"):
        list(tok.encode_stream([b"bytes"]))
    with pytest.raises(FileNotFoundError, match="source: no file at"):
        tok.encode_stream(__import__("pathlib").Path("/nonexistent/corpus.txt"))
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at position 3, which is disallowed"):
        list(tok.encode_stream(["ab", "c<|end", "oftext|>"]))  # cut inside the token; position counts all pieces
    with pytest.raises(ValueError, match=r"allowed_special names \['<\|nope\|>'\]"):
        tok.encode_stream(["a"], allowed_special={"<|nope|>"})


# ---- special tokens first ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok_first(tok) -> BPETokenizer:
    corpus = data.load("pydoc")[:150_000] + "\n" + MULTILINGUAL
    return BPETokenizer.train(corpus, 1024, special_tokens=[EOT, PAD], specials_first=True)


def test_special_tokens_first_shift_every_other_id(tok, tok_first):
    assert tok_first.special_tokens == {EOT: 0, PAD: 1} and tok_first.vocab[:2] == (EOT.encode(), PAD.encode())
    assert tok_first.vocab[2:] == tok.vocab[:-2] and tok_first.vocab_size == tok.vocab_size == 1024
    assert tok_first.merges == tuple((a + 2, b + 2) for a, b in tok.merges)
    shifted = {tok.special_id(EOT): 0, tok.special_id(PAD): 1}
    for text in VARIED:
        ids = tok_first.encode(text, allowed_special="all").tolist()
        assert ids == [shifted.get(i, i + 2) for i in tok.encode(text, allowed_special="all").tolist()]
        assert ids == as_tiktoken(tok_first).encode(text, allowed_special="all")
        assert tok_first.decode(ids) == text


def test_hand_worked_special_tokens_first():
    tok = BPETokenizer.train("ab<|x|>ab<|x|>ab", 260, special_tokens=["<|x|>"], specials_first=True)
    assert tok.special_tokens == {"<|x|>": 0} and tok.byte_ids[ord("a")] == 98 and tok.merges == ((98, 99),)
    assert tok.encode("ab<|x|>a", allowed_special="all").tolist() == [257, 0, 98]
    assert tok.decode([257, 0, 98]) == "ab<|x|>a" and tok.decode_bytes([0]) == b"<|x|>"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from([EOT, PAD])), max_size=8))
def test_special_tokens_first_round_trip(tok_first, parts):
    text = "".join(parts)
    ids = tok_first.encode(text, allowed_special="all")
    assert tok_first.decode(ids, errors="strict") == text
    assert ids.tolist().count(0) == text.count(EOT) and ids.tolist().count(1) == text.count(PAD)


def test_special_tokens_first_save_and_load(tok_first, tmp_path):
    path = tmp_path / "first.json"
    tok_first.save(path)
    content = json.loads(path.read_text())
    assert content["special_tokens"] == {EOT: 0, PAD: 1} and content["byte_ids"] is None
    loaded = BPETokenizer.load(path)
    assert loaded == tok_first and loaded.vocab == tok_first.vocab
    for text in VARIED:
        assert loaded.encode(text, allowed_special="all").tolist() == tok_first.encode(text, allowed_special="all"
                                                                                        ).tolist()
    assert streamed(loaded, [f"a{EOT}", "b"], allowed_special="all") == [2 + 97, 0, 2 + 98]


@pytest.mark.parametrize("first", [True, False], ids=["specials-first", "specials-last"])
def test_from_vocab_either_order(tok, tok_first, first):
    source = tok_first if first else tok
    vocab = dict(enumerate(source.vocab))
    merges = [(source.vocab[a], source.vocab[b]) for a, b in source.merges]
    rebuilt = BPETokenizer.from_vocab(vocab, merges, special_tokens=[EOT, PAD])
    assert rebuilt == source and rebuilt.vocab == source.vocab
    if not first:  # a special token missing from a vocab that has them last gets the next id
        del vocab[1023]
        assert BPETokenizer.from_vocab(vocab, merges, special_tokens=[EOT, PAD]).special_tokens == {EOT: 1022,
                                                                                                     PAD: 1023}


def test_from_vocab_of_gpt2_files(tmp_path):
    gpt2 = BPETokenizer.from_gpt2_files(*write_gpt2_files(tmp_path, GPT2_MERGES, [EOT]))
    vocab = dict(enumerate(gpt2.vocab))
    merges = [(gpt2.vocab[a], gpt2.vocab[b]) for a, b in gpt2.merges]
    assert BPETokenizer.from_vocab(vocab, merges, special_tokens=[EOT]) == gpt2  # permuted byte ids are kept


def test_special_tokens_first_errors(tok_first):
    vocab = dict(enumerate(tok_first.vocab))
    merges = [(tok_first.vocab[a], tok_first.vocab[b]) for a, b in tok_first.merges]
    with pytest.raises(ValueError, match=r"come first in vocab \(ids 0..1\), so all of them must be in vocab; "
                                         r"missing: \['<\|new\|>'\]"):
        BPETokenizer.from_vocab(vocab, merges, special_tokens=[EOT, PAD, "<|new|>"])
    with pytest.raises(ValueError, match=r"merges\[0\] = .* must join two tokens of vocab into the token with the id "
                                         r"258"):
        BPETokenizer.from_vocab(vocab, merges[1:], special_tokens=[EOT, PAD])
    with pytest.raises(ValueError, match=r"vocab must hold the 256 single bytes as the ids 0..255"):
        BPETokenizer.from_vocab(vocab, merges, special_tokens=[])
    with pytest.raises(ValueError, match=r"vocab must have the ids 0..1022, each once"):
        BPETokenizer.from_vocab({i: t for i, t in vocab.items() if i != 5}, merges, special_tokens=[EOT, PAD])
    with pytest.raises(ValueError, match=r"merges\[0\] must be a pair of ids, each in \[1, 256\]"):
        BPETokenizer([(0, 97)], special_tokens={EOT: 0})  # id 0 is the special token, not a byte
    with pytest.raises(ValueError, match=r"after the merges, \[256, 257\], or come first, \[0, 1\]; got \[0, 2\]"):
        BPETokenizer([], special_tokens={EOT: 0, PAD: 2})
    with pytest.raises(ValueError, match=r"byte_ids must be None or a permutation of the ids 1..256"):
        BPETokenizer([], special_tokens={EOT: 0}, byte_ids=list(range(256)))
    with pytest.raises(TypeError, match="specials_first must be a bool"):
        BPETokenizer.train("hello", 300, special_tokens=[EOT], specials_first="yes")
