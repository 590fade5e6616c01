"""The pretraining recipe in one frozen config: AdamW, linear warm-up then cosine decay, global-norm clipping.

>>> config = TrainConfig.ci(steps=200)
>>> optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)  # doctest: +SKIP
>>> schedule = make_schedule(config)
>>> [round(float(schedule(count)), 6) for count in (0, 9, 200)]   # warm-up, the peak (0.003), the end
[0.0003, 0.003, 0.0003]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from labkit._checks import check_int
from labkit.profiles import Profile, get_profile


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every setting of a pretraining run. Presets: ci, cpu, gpu, for_profile."""

    steps: int  # optimizer steps in the whole run; the learning rate reaches its final value here
    batch_size: int  # B: sequences per micro-batch
    seq_len: int  # T: positions per sequence
    accumulation: int = 1  # k: micro-batches whose gradients are averaged into one optimizer step
    learning_rate: float = 1e-3  # the peak learning rate, reached at the end of warm-up
    final_learning_rate: float = 1e-4  # where the cosine decay ends, at step `steps`
    warmup_steps: int = 100  # steps of linear increase from learning_rate / warmup_steps to learning_rate
    weight_decay: float = 0.1  # AdamW's decoupled decay, applied to matrices only (not to biases and norm scales)
    clip_norm: float | None = 1.0  # gradients are rescaled so their global L2 norm is at most this; None: no clip
    b1: float = 0.9  # Adam's decay rate of the gradient mean
    b2: float = 0.95  # Adam's decay rate of the squared-gradient mean (GPT-3's 0.95, steadier than 0.999)
    eps: float = 1e-8  # added to Adam's denominator
    eval_every: int = 100  # steps between evaluations on the validation windows
    eval_batches: int = 8  # batches in the fixed validation set (each of batch_size windows)
    checkpoint_every: int | None = None  # steps between checkpoints (None: only at the end, if a folder is given)
    keep_checkpoints: int = 3  # how many of the newest checkpoints are kept

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "accumulation", "eval_every", "eval_batches",
                     "keep_checkpoints"):
            check_int(f"TrainConfig.{name}", getattr(self, name))
        check_int("TrainConfig.warmup_steps", self.warmup_steps, minimum=0)
        if self.checkpoint_every is not None:
            check_int("TrainConfig.checkpoint_every", self.checkpoint_every)
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) must be at most steps ({self.steps})")
        positive = {"learning_rate": self.learning_rate, "eps": self.eps,
                    "clip_norm": 1.0 if self.clip_norm is None else self.clip_norm}
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"TrainConfig.{name} must be a positive number; got {value!r}")
        if not 0 <= self.final_learning_rate <= self.learning_rate:
            raise ValueError(f"TrainConfig.final_learning_rate must be in [0, learning_rate={self.learning_rate}]; "
                             f"got {self.final_learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0; got {self.weight_decay!r}")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1); got {getattr(self, name)!r}")

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step: k x B x T."""
        return self.accumulation * self.batch_size * self.seq_len

    @property
    def total_tokens(self) -> int:
        """Tokens the whole run trains on: steps x k x B x T."""
        return self.steps * self.tokens_per_step

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``labkit.train.fit`` that this config decides, so that a run cannot train on a
        different number of tokens than ``total_tokens`` counts: ``fit(..., **config.fit_kwargs())``.

        >>> TrainConfig.ci(accumulation=4).fit_kwargs()["accumulation"]
        4
        """
        return dict(steps=self.steps, batch_size=self.batch_size, accumulation=self.accumulation,
                    eval_every=self.eval_every, eval_batches=self.eval_batches,
                    checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints)

    # ---- presets ----
    @classmethod
    def ci(cls, **overrides: Any) -> "TrainConfig":
        """Seconds on a CPU: tests and the ``ci`` profile (pairs with ``GPTConfig.ci``)."""
        return cls(**{**dict(steps=60, batch_size=8, seq_len=32, learning_rate=3e-3, final_learning_rate=3e-4,
                             warmup_steps=10, eval_every=20, eval_batches=2), **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> "TrainConfig":
        """A few minutes on a 2-core laptop (pairs with ``GPTConfig.cpu``)."""
        return cls(**{**dict(steps=600, batch_size=16, seq_len=128, learning_rate=2e-3, final_learning_rate=2e-4,
                             warmup_steps=50, eval_every=100, eval_batches=8), **overrides})

    @classmethod
    def gpu(cls, **overrides: Any) -> "TrainConfig":
        """GPT-2-small-sized training on one accelerator: 8 x 32 x 1024 = 262k tokens per step (pairs with
        ``GPTConfig.gpu``)."""
        return cls(**{**dict(steps=5000, batch_size=32, seq_len=1024, accumulation=8, learning_rate=6e-4,
                             final_learning_rate=6e-5, warmup_steps=500, eval_every=250, eval_batches=20,
                             checkpoint_every=500), **overrides})

    @classmethod
    def for_profile(cls, profile: Profile | str | None = None, **overrides: Any) -> "TrainConfig":
        """The preset of a compute profile (default: ``labkit.profiles.get_profile()``); ``tpu`` uses ``gpu``'s."""
        profile = profile if isinstance(profile, Profile) else get_profile(profile)
        return profile.pick(ci=cls.ci, cpu=cls.cpu, gpu=cls.gpu)(**overrides)


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """The learning rate of each update: linear warm-up to the peak, then a cosine down to ``final_learning_rate``.

    **Step convention.** optax calls a schedule with ``count``, the number of updates *already made*: the first
    update of a run is count 0, the last count S - 1 (S = ``steps``). With s = count, warm-up W = ``warmup_steps``,
    peak lr_max = ``learning_rate`` and final lr_min = ``final_learning_rate``::

        lr(s) = lr_max * (s + 1) / W                                            for 0 <= s < W
        lr(s) = lr_min + (lr_max - lr_min) * (1 + cos(pi * (s - W) / (S - W))) / 2   for W <= s <= S

    The second line is the book's cosine (chapter 4) with its step s read as this count. So the first update already
    has lr_max / W > 0 (no update is wasted at learning rate 0), updates W and W + 1 (counts W - 1 and W) both have
    the peak, and the last update (count S - 1) a rate a hair above lr_min, which count S reaches. With W = 0 there
    is no warm-up and count 0 has lr_max.

    >>> s = make_schedule(TrainConfig.ci(steps=100, warmup_steps=10, learning_rate=1e-3, final_learning_rate=0.0))
    >>> [round(float(s(count)), 6) for count in (0, 9, 55, 100)]    # updates 1, 10 (peak), 56 (halfway down), after
    [0.0001, 0.001, 0.0005, 0.0]
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    peak, final = config.learning_rate, config.final_learning_rate
    warmup, decay = config.warmup_steps, max(config.steps - config.warmup_steps, 1)

    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        warming = peak * (count + 1) / max(warmup, 1)
        progress = jnp.clip((count - warmup) / decay, 0.0, 1.0)  # 0 at the peak, 1 at the last step
        cosine = final + (peak - final) * 0.5 * (1 + jnp.cos(math.pi * progress))
        return jnp.where(count < warmup, warming, cosine)

    return schedule


def decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: matrices (embeddings, kernels), not biases or norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clip the gradients' global norm to ``clip_norm``, then AdamW with ``make_schedule``'s learning rates."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    adamw = optax.adamw(make_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=decay_mask)
    if config.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
