"""The chapter-4 GPT, pretrained on Python's documentation: trained once, then loaded from a cache folder.

Fine-tuning and the applications start from a pretrained model. ``pretrained_gpt`` runs the pretraining notebook's
recipe in one call (a byte-level BPE trained on the corpus, the profile's ``GPTConfig`` and ``TrainConfig``,
``fit`` with a checkpoint) into a folder named after a digest of everything that decides the weights. A second
call with the same settings (and the same labkit code) finds the saved tokenizer and the finished checkpoint and
loads them instead of training; training on a CPU is deterministic, so the loaded weights are the ones a fresh run
would give.

>>> pre = pretrained_gpt("ci", key=jax.random.key(0))      # seconds in the ci profile; cached afterwards
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

from labkit import data
from labkit.bpe import BPETokenizer
from labkit.gpt import GPT, GPTConfig
from labkit.lm import loss as lm_loss
from labkit.optim import TrainConfig, make_optimizer
from labkit.scaling import size_to_data
from labkit.profiles import Profile, get_profile
from labkit.tokens import TokenWindows, split_tokens
from labkit.train import History, fit

__all__ = ["CORPORA", "Pretrained", "pretrained_gpt"]

CORPORA = ("pydoc", "stdlib")  # text corpora of labkit.data the model can be pretrained on
_FORMAT = 2  # bump when the recipe changes in a way the digest does not see
# The modules whose code decides the tokenizer and the trained weights; their source is part of the digest, so an
# edit to any of them trains afresh instead of loading weights the new code would not have produced.
_RECIPE = ("bpe", "bpe_train", "gpt", "gpt_config", "attention", "blockwise", "masks", "positions", "kvcache", "nn",
           "lm", "optim", "step", "train", "tokens", "checkpoint", "data", "profiles", "scaling", "zoo")


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """A pretrained GPT with everything needed to use it and to continue from it."""

    model: GPT  # the trained model, in eval mode
    tokenizer: BPETokenizer  # the byte-level BPE its token ids come from
    config: GPTConfig  # the model's sizes
    train_config: TrainConfig  # the pretraining recipe
    history: History  # losses of the pretraining run (validation loss under history.eval["loss"])
    train_ids: np.ndarray  # the token ids it was trained on (T_train,)
    valid_ids: np.ndarray  # held-out token ids of the same corpus (T_valid,), never trained on
    directory: Path  # the folder it was trained into or loaded from: tokenizer, token ids, checkpoints

    @property
    def validation_loss(self) -> float:
        """Mean next-token cross-entropy (nats) on the validation windows after the last step."""
        return float(self.history.eval["loss"][-1])


def _digest(**parts: Any) -> str:
    code = {name: hashlib.sha256((Path(__file__).parent / f"{name}.py").read_bytes()).hexdigest() for name in _RECIPE}
    text = json.dumps({**parts, "code": code}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tokenized(text: str, vocab_size: int, directory: Path) -> tuple[BPETokenizer, np.ndarray]:
    """The BPE trained on ``text`` and the text's token ids: from ``directory`` if an earlier call saved them there."""
    tokenizer_file, ids_file = directory / "tokenizer.json", directory / "tokens.npy"
    if tokenizer_file.is_file() and ids_file.is_file():
        return BPETokenizer.load(tokenizer_file), np.load(ids_file)
    tokenizer = BPETokenizer.train(text, vocab_size=vocab_size)
    ids = tokenizer.encode_ordinary(text)
    directory.mkdir(parents=True, exist_ok=True)
    partial = ids_file.with_name("tokens.partial")  # each file is written whole, then renamed: never half a file
    with open(partial, "wb") as f:
        np.save(f, ids)
    partial.replace(ids_file)
    partial = tokenizer_file.with_name("tokenizer.partial")
    tokenizer.save(partial)
    partial.replace(tokenizer_file)
    return tokenizer, ids


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
    ``labkit.data.cache_dir() / "pretrained"``. ``key`` decides the initial weights and the training batches.
    The model and recipe are ``labkit.scaling.size_to_data``'s for the corpus's training tokens (the presets on
    ci and cpu; on gpu and tpu the largest model the data can feed); ``model_overrides`` and ``train_overrides``
    replace fields of them.
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
    tokenizer, ids = _tokenized(text, vocab_size, directory)
    train_ids, valid_ids = split_tokens(ids, validation_fraction=validation_fraction)
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
