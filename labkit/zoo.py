"""The chapter-4 GPT, pretrained on Python's documentation: trained once, then loaded from a cache folder.

Fine-tuning and the applications start from a pretrained model. ``pretrained_gpt`` runs the pretraining notebook's
recipe in one call (the corpus split into training and validation text, a byte-level BPE trained on the training text
only, the profile's ``GPTConfig`` and ``TrainConfig``, ``fit`` with a checkpoint) into a folder named after a digest
of everything that decides the weights. A second call with the same settings (and the same labkit code) finds the
saved tokenizer, token ids and finished checkpoint and loads them instead of training; training on a CPU is
deterministic, so the loaded weights are the ones a fresh run would give.

>>> pre = pretrained_gpt("ci", key=jax.random.key(0), progress=False)  # seconds in ci; cached afterwards
>>> pre.model.hidden(jnp.asarray(pre.valid_ids[None, :16])).shape
(1, 16, 32)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from labkit import data, deps
from labkit.bpe import BPETokenizer
from labkit.gpt import GPT, GPTConfig
from labkit.lm import loss as lm_loss
from labkit.optim import TrainConfig, make_optimizer
from labkit.scaling import size_to_data
from labkit.profiles import Profile, get_profile
from labkit.tokens import TokenWindows
from labkit.train import History, fit

__all__ = ["CORPORA", "Pretrained", "pretrained_gpt", "split_text"]

CORPORA = ("pydoc", "stdlib")  # text corpora of labkit.data the model can be pretrained on
_FORMAT = 3  # bump when the recipe changes in a way the digest does not see


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """A pretrained GPT with everything needed to use it and to continue from it."""

    model: GPT  # the trained model, in eval mode
    tokenizer: BPETokenizer  # the byte-level BPE its token ids come from
    config: GPTConfig  # the model's sizes
    train_config: TrainConfig  # the pretraining recipe
    history: History  # losses of the pretraining run (validation loss under history.eval["loss"])
    train_ids: np.ndarray  # the token ids it was trained on (T_train,): the training text, encoded
    valid_ids: np.ndarray  # the validation text, encoded (T_valid,): seen neither by the model nor by the tokenizer
    directory: Path  # the folder it was trained into or loaded from: tokenizer, token ids, checkpoints

    @property
    def validation_loss(self) -> float:
        """Mean next-token cross-entropy (nats) on the validation windows after the last step."""
        return float(self.history.eval["loss"][-1])


def _digest(**parts: Any) -> str:
    """A digest of ``parts`` and of the code of every labkit module this one imports, transitively (``labkit.deps``):
    an edit to that code trains afresh instead of loading weights the new code would not have produced, while an edit
    to a docstring or a comment reuses the cache."""
    code = deps.code_digests(deps.closure([__name__]))
    text = json.dumps({**parts, "code": code}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_text(text: str, *, validation_fraction: float) -> tuple[str, str]:
    r"""``text`` cut in two, training part first: the validation part is about the last ``validation_fraction`` of
    the characters, starting at a paragraph (just after the last blank line before the cut; at the cut itself if no
    blank line comes before it).

    Split the text before training the tokenizer, and train it on the training part only: merges learned from the
    validation text would make that text look more predictable than new text.

    >>> split_text("one\n\ntwo\n\nthree\n\nfour", validation_fraction=0.3)
    ('one\n\ntwo\n\n', 'three\n\nfour')
    """
    if not isinstance(text, str) or len(text) < 2:
        raise ValueError(f"text must be a str of at least 2 characters; got {text!r:.40}")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) \
            or not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be a float strictly between 0 and 1; got {validation_fraction!r}")
    cut = int(round(len(text) * (1.0 - validation_fraction)))
    blank = text.rfind("\n\n", 0, cut)
    cut = blank + 2 if blank >= 0 else cut
    if not 0 < cut < len(text):
        raise ValueError(f"validation_fraction={validation_fraction} of {len(text)} characters leaves an empty part")
    return text[:cut], text[cut:]


def _save_array(path: Path, array: np.ndarray) -> None:
    partial = path.with_suffix(".partial")  # written whole, then renamed: never half a file
    with open(partial, "wb") as f:
        np.save(f, array)
    partial.replace(path)


def _tokenized(train_text: str, valid_text: str, vocab_size: int,
               directory: Path) -> tuple[BPETokenizer, np.ndarray, np.ndarray]:
    """The BPE trained on ``train_text`` alone and the ids of both texts: from ``directory`` if an earlier call saved
    them there."""
    files = {name: directory / name for name in ("tokenizer.json", "train.npy", "valid.npy")}
    if all(path.is_file() for path in files.values()):
        return BPETokenizer.load(files["tokenizer.json"]), np.load(files["train.npy"]), np.load(files["valid.npy"])
    tokenizer = BPETokenizer.train(train_text, vocab_size=vocab_size)  # never sees the validation text
    train_ids, valid_ids = tokenizer.encode_ordinary(train_text), tokenizer.encode_ordinary(valid_text)
    directory.mkdir(parents=True, exist_ok=True)
    _save_array(files["train.npy"], train_ids)
    _save_array(files["valid.npy"], valid_ids)
    partial = files["tokenizer.json"].with_suffix(".partial")  # the tokenizer last: its presence marks a whole set
    tokenizer.save(partial)
    partial.replace(files["tokenizer.json"])
    return tokenizer, train_ids, valid_ids


def pretrained_gpt(
    profile: Profile | str | None = None,
    *,
    key: jax.Array,
    corpus: str = "pydoc",
    vocab_size: int | None = None,
    validation_fraction: float = 0.1,
    cache: str | Path | None = None,
    progress: bool = True,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> Pretrained:
    """Train (or load from ``cache``) the profile's GPT on ``corpus``, with a BPE of ``vocab_size`` tokens.

    ``vocab_size`` defaults to 512 (ci) or 2048 (cpu, gpu, tpu: the corpora are small); ``cache`` to
    ``labkit.data.cache_dir() / "pretrained"``. The last ``validation_fraction`` of the text (``split_text``) is held
    out before the tokenizer is trained: neither the tokenizer nor the model sees it. ``key`` decides the initial
    weights and the training batches. The model and recipe are ``labkit.scaling.size_to_data``'s for the corpus's
    training tokens (the presets on ci and cpu; on gpu and tpu the largest model the data can feed);
    ``model_overrides`` and ``train_overrides`` replace fields of them.
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {', '.join(CORPORA)}; got {corpus!r}")
    if not isinstance(key, jax.Array) or not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(f"key must be a typed jax random key (jax.random.key(seed)); got {type(key).__name__}")
    vocab_size = profile.pick(ci=512, cpu=2048) if vocab_size is None else vocab_size
    if type(vocab_size) is not int or vocab_size < 256:
        raise ValueError(f"vocab_size must be an int of at least 256 (the byte ids); got {vocab_size!r}")

    text = data.load(corpus)
    digest = _digest(format=_FORMAT, profile=profile.name, corpus=corpus, vocab_size=vocab_size,
                     text=hashlib.sha256(text.encode("utf-8")).hexdigest(), validation_fraction=validation_fraction,
                     model_overrides=model_overrides or {}, train_overrides=train_overrides or {},
                     dtype=profile.compute_dtype, key=np.asarray(jax.random.key_data(key)).tolist())
    directory = Path(cache) if cache is not None else data.cache_dir() / "pretrained"
    directory = directory / f"gpt-{profile.name}-{corpus}-{digest}"
    train_text, valid_text = split_text(text, validation_fraction=validation_fraction)  # before the tokenizer
    tokenizer, train_ids, valid_ids = _tokenized(train_text, valid_text, vocab_size, directory)
    sized = size_to_data(profile, len(train_ids), vocab_size=vocab_size)  # gpu, tpu: the model the data can feed
    config = dataclasses.replace(sized.config, **(model_overrides or {}))
    train_config = dataclasses.replace(sized.train, **(train_overrides or {}))
    if config.max_len < train_config.seq_len:
        raise ValueError(f"the model's max_len ({config.max_len}) is shorter than the training seq_len "
                         f"({train_config.seq_len})")

    model = GPT(config, rngs=nnx.Rngs(jax.random.fold_in(key, 0)))
    optimizer = nnx.Optimizer(model, make_optimizer(train_config), wrt=nnx.Param)
    history = fit(model, optimizer, lm_loss, TokenWindows(train_ids, seq_len=train_config.seq_len),
                  key=jax.random.fold_in(key, 1), eval_data=TokenWindows(valid_ids, seq_len=train_config.seq_len),
                  checkpoint_dir=directory / "checkpoints", progress=progress, **train_config.fit_kwargs())
    model.eval()
    return Pretrained(model=model, tokenizer=tokenizer, config=config, train_config=train_config, history=history,
                      train_ids=train_ids, valid_ids=valid_ids, directory=directory)
