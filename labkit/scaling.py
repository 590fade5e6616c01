"""Scaling laws at small scale: the compute of a training run, power-law fits of loss against size or compute.

Compute follows the book's count (chapter 4): a trained token costs ``6`` FLOPs per weight that takes part in a
matrix product (2 forward, 4 backward; ``matmul_weights``), plus attention's two T x T products. Sizes follow
Kaplan et al. (2020): N counts the non-embedding parameters.

>>> config = GPTConfig.ci()
>>> non_embedding_params(config), flops_per_token(config, seq_len=64)
(25472, 221184)
>>> fit = fit_power_law([1e3, 1e4, 1e5], [4.0, 2.0, 1.0])   # L = a x^(-alpha)
>>> round(fit.alpha, 4), round(float(fit.predict(1e6)), 4)
(0.301, 0.5)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
from scipy import optimize

from labkit._checks import check_int
from labkit.gpt_config import GPTConfig, param_count
from labkit.optim import TrainConfig
from labkit.positions import POSITION_SCHEMES
from labkit.profiles import Profile, get_profile

__all__ = ["PowerLaw", "compute_optimal", "fit_power_law", "fit_saturating_power_law", "flops_per_token",
           "matmul_weights", "non_embedding_params", "pareto_frontier", "size_to_data", "training_compute"]

ATTENTION = ("causal", "full", "none")  # how flops_per_token counts attention's T x T products


def _check_config(config: Any) -> None:
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig; got {type(config).__name__}")


def non_embedding_params(config: GPTConfig) -> int:
    """N of the scaling laws: the parameters of ``GPT(config)`` except the token and position tables and an untied
    LM head (Kaplan et al. 2020 leave out "vocabulary and positional embeddings").

    >>> non_embedding_params(GPTConfig.ci(num_layers=4)) == 2 * non_embedding_params(GPTConfig.ci()) - 64
    True
    """
    _check_config(config)
    vocabulary = config.vocab_size * config.width * (1 if config.tie_embeddings else 2)
    positions = config.max_len * config.width if POSITION_SCHEMES[config.positions].learned else 0
    return param_count(config) - vocabulary - positions


def matmul_weights(config: GPTConfig) -> int:
    """The weights that take part in a matrix product for every token: the kernels of attention's four projections
    and of the feed-forward network in every block, and the LM head's V x D matrix (tied or not).

    Left out, as in the book's count of 6N: look-ups (the position table, and an untied token embedding on the way
    in) and element-wise parameters (biases and norm scales).

    >>> c = GPTConfig.ci()                                 # 2 blocks of 12 D² weights, and the V x D head
    >>> matmul_weights(c) == 2 * 12 * c.width**2 + c.vocab_size * c.width
    True
    """
    _check_config(config)
    d, f, h = config.width, config.mlp_width, config.head_width
    q_out, kv_out = config.num_heads * h, config.num_kv_heads * h
    attn = 2 * d * q_out + 2 * d * kv_out  # query and out, key and value
    mlp = (2 if config.mlp == "gelu" else 3) * d * f  # up, down (and gate for SwiGLU)
    return config.num_layers * (attn + mlp) + config.vocab_size * d


def flops_per_token(config: GPTConfig, seq_len: int, *, attention: str = "causal") -> int:
    """Training FLOPs (forward and backward) per token of a GPT on sequences of ``seq_len`` = T tokens.

    ``6 N'`` for the weights, N' = ``matmul_weights(config)``: every weight of a matrix product, the LM head
    included (a tied embedding counts once, as the head); look-ups, biases and norm scales count as free. Plus
    attention's scores q kᵀ and weighted sum of values: ``6 L T D`` for the causal half a language model needs
    (``attention="causal"``), ``12 L T D`` for the full square a plain implementation computes (``"full"``, PaLM's
    convention), nothing for ``"none"`` (the plain 6N).

    >>> c = GPTConfig.ci()
    >>> flops_per_token(c, 64, attention="full") - flops_per_token(c, 64) == 6 * c.num_layers * 64 * c.width
    True
    """
    _check_config(config)
    check_int("seq_len", seq_len)
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}; got {attention!r}")
    per_square = 2 * 6 * config.num_layers * seq_len * config.width  # 2 products of 2 T D FLOPs, x 3 with backward
    return 6 * matmul_weights(config) + {"causal": per_square // 2, "full": per_square, "none": 0}[attention]


def training_compute(config: GPTConfig, seq_len: int, tokens: int, *, attention: str = "causal") -> float:
    """C: training FLOPs of ``tokens`` trained tokens, ``flops_per_token(config, seq_len) * tokens``.

    About 6 N D in the notation of the scaling laws (N parameters, D tokens; not the model width D).

    >>> training_compute(GPTConfig.ci(), 64, 1000) == 1000 * flops_per_token(GPTConfig.ci(), 64)
    True
    """
    check_int("tokens", tokens)
    return float(flops_per_token(config, seq_len, attention=attention)) * tokens


def compute_optimal(compute: float, *, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """(N, D) that spend ``compute`` = 6 N D with D = ``tokens_per_param`` x N: Hoffmann et al. (2022)'s rule of
    thumb of about 20 tokens per parameter.

    >>> [f"{v:.3g}" for v in compute_optimal(5.76e23)]     # Chinchilla's budget: about 70B parameters, 1.4T tokens
    ['6.93e+10', '1.39e+12']
    """
    for name, value in (("compute", compute), ("tokens_per_param", tokens_per_param)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    params = math.sqrt(compute / (6.0 * tokens_per_param))
    return params, tokens_per_param * params


def _as_points(x: Any, y: Any, *, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float64 (n,) arrays, checked: equal length, at least ``minimum`` points, finite and positive."""
    arrays = []
    for name, values in (("x", x), ("y", y)):
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a sequence of numbers; got {type(values).__name__}") from None
        if array.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional (n,); got shape {array.shape}")
        if not np.all(np.isfinite(array)) or not np.all(array > 0):
            raise ValueError(f"{name} must hold finite positive numbers (a power law lives on log axes); "
                             f"got minimum {array.min() if array.size else None!r}")
        arrays.append(array)
    x, y = arrays
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length; got {len(x)} and {len(y)}")
    if len(x) < minimum:
        raise ValueError(f"need at least {minimum} points for this fit; got {len(x)}")
    if np.ptp(x) == 0:
        raise ValueError("x must hold at least two different values; got all equal")
    return x, y


def _r2_log(y: np.ndarray, predicted: np.ndarray) -> float:
    """R² of log(predicted) against log(y): 1 - residual / total sum of squares, on log axes."""
    residual = float(np.sum((np.log(y) - np.log(predicted)) ** 2))
    total = float(np.sum((np.log(y) - np.log(y).mean()) ** 2))
    if total == 0.0:
        return 1.0 if residual < 1e-24 else 0.0
    return 1.0 - residual / total


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerLaw:
    """A fitted L(x) = a x^(-alpha) + c; ``c`` is 0 for the plain power law of ``fit_power_law``."""

    a: float  # scale: the value of a x^(-alpha) at x = 1
    alpha: float  # exponent: every doubling of x multiplies L - c by 2^(-alpha)
    c: float  # the level L approaches as x grows (0 for a plain power law)
    r2: float  # R² of log L on log axes (1: the fit passes through every point)
    num_points: int  # points the fit was made from

    def predict(self, x: Any) -> np.ndarray:
        """L at ``x`` (a number or an array of positive numbers)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(x > 0):
            raise ValueError("x must be positive")
        return self.a * x ** (-self.alpha) + self.c

    def __str__(self) -> str:
        level = f" + {self.c:.4g}" if self.c else ""
        return (f"L = {self.a:.4g} x^(-{self.alpha:.4g}){level}  "
                f"(R² in log space {self.r2:.4f}, {self.num_points} points)")


def fit_power_law(x: Any, y: Any) -> PowerLaw:
    """L = a x^(-alpha), fitted by least squares of log y on log x (a straight line on log-log axes).

    >>> fit = fit_power_law([1, 2, 4, 8], [8, 4, 2, 1])
    >>> round(fit.a, 6), round(fit.alpha, 6), round(fit.r2, 6)
    (8.0, 1.0, 1.0)
    """
    x, y = _as_points(x, y, minimum=3)
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    a, alpha = float(np.exp(intercept)), float(-slope)
    return PowerLaw(a=a, alpha=alpha, c=0.0, r2=_r2_log(y, a * x ** (-alpha)), num_points=len(x))


def fit_saturating_power_law(x: Any, y: Any, *, grid: int = 200) -> PowerLaw:
    """L = a x^(-alpha) + c with 0 <= c < min(y): a loss that approaches an irreducible level c.

    Least squares in log L. For each of ``grid`` levels c in [0, min(y)) the other two numbers are a straight-line
    fit of log(y - c) on log x; the best of these starts scipy's ``curve_fit``, whose result is kept if it is
    better. Three numbers from few, noisy points are poorly determined: compare ``alpha`` and ``c`` across fits
    before believing them.

    >>> x = np.array([1e3, 1e4, 1e5, 1e6])
    >>> fit = fit_saturating_power_law(x, 5 * x ** -0.5 + 1)
    >>> round(fit.alpha, 4), round(fit.c, 4)
    (0.5, 1.0)
    """
    x, y = _as_points(x, y, minimum=4)
    check_int("grid", grid)
    log_x, log_y = np.log(x), np.log(y)

    def log_model(log_x: np.ndarray, log_a: float, alpha: float, c: float) -> np.ndarray:
        return np.log(np.exp(log_a - alpha * log_x) + c)

    def loss(params: tuple[float, float, float]) -> float:
        return float(np.sum((log_y - log_model(log_x, *params)) ** 2))

    best = None
    for c in y.min() * np.linspace(0.0, 1.0, grid, endpoint=False):  # profile over the level c
        slope, intercept = np.polyfit(log_x, np.log(y - c), 1)
        params = (float(intercept), float(-slope), float(c))
        if best is None or loss(params) < loss(best):
            best = params
    try:
        # "covariance could not be estimated" (4 points, 3 numbers) does not matter; overflow in a trial step is
        # rejected by the optimizer itself
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            refined, _ = optimize.curve_fit(log_model, log_x, log_y, p0=best, maxfev=20_000, ftol=1e-14, xtol=1e-14,
                                            bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, y.min() * (1 - 1e-9)]))
        if np.all(np.isfinite(refined)) and loss(tuple(refined)) <= loss(best):  # nan compares False
            best = tuple(float(v) for v in refined)
    except (RuntimeError, ValueError):  # no convergence: keep the grid's best
        pass
    log_a, alpha, c = best
    fit = PowerLaw(a=math.exp(log_a), alpha=alpha, c=c, r2=0.0, num_points=len(x))
    return dataclasses.replace(fit, r2=_r2_log(y, fit.predict(x)))


def pareto_frontier(x: Any, y: Any) -> np.ndarray:
    """Indices, by increasing x, of the points whose y is lower than that of every point with smaller or equal x:
    the lower envelope of many training curves (the best loss reached so far at each compute).

    >>> pareto_frontier([1, 2, 3, 4], [5.0, 6.0, 4.0, 4.0]).tolist()
    [0, 2]
    """
    x, y = (np.asarray(v, dtype=np.float64) for v in (x, y))
    if x.ndim != 1 or x.shape != y.shape or not x.size:
        raise ValueError(f"x and y must be non-empty one-dimensional arrays of the same length; got shapes "
                         f"{x.shape} and {y.shape}")
    order = np.lexsort((y, x))  # by x, ties by y
    keep, lowest = [], np.inf
    for i in order:
        if y[i] < lowest:
            keep.append(i)
            lowest = y[i]
    return np.asarray(keep, dtype=np.int64)


# ---- sizing a run to its data ------------------------------------------------------------------------------------

MAX_PASSES = 4  # Muennighoff et al. (2023): up to about four passes over repeated data are almost as good as fresh
TOKENS_PER_PARAM = 20  # Hoffmann et al. (2022): compute-optimal training uses about 20 tokens per parameter
# The gpu/tpu rungs, smallest first: (L layers, D width, B, T, accumulation k, peak learning rate); head width 64.
RUNGS = ((4, 256, 32, 512, 1, 2e-3), (6, 384, 32, 1024, 1, 1e-3), (8, 512, 32, 1024, 2, 8e-4),
         (12, 768, 32, 1024, 8, 6e-4))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizedRun:
    """A model and a recipe chosen for the tokens a corpus has, with the two numbers that say how well they fit."""

    config: GPTConfig  # the model
    train: TrainConfig  # the recipe; train.total_tokens tokens are trained on
    train_tokens: int  # tokens of training data available
    reason: str  # why this size, in one line

    @property
    def passes(self) -> float:
        """How many times the run goes over its training data on average (tokens trained / tokens available)."""
        return self.train.total_tokens / self.train_tokens

    @property
    def tokens_per_param(self) -> float:
        """Tokens trained per non-embedding parameter (about 20 is compute-optimal)."""
        return self.train.total_tokens / non_embedding_params(self.config)


def size_to_data(profile: Profile | str, train_tokens: int, *, vocab_size: int) -> SizedRun:
    """The profile's model and recipe for ``train_tokens`` tokens of training data.

    ``ci`` and ``cpu`` keep their presets (sized to a time budget; their passes are stated, not changed). ``gpu``
    and ``tpu`` take the largest of ``RUNGS`` that the data can feed with ``TOKENS_PER_PARAM`` tokens per
    non-embedding parameter in at most ``MAX_PASSES`` passes, trained for that many tokens; with less data than the
    smallest rung needs (Python's documentation has about 0.1M tokens), the ``cpu`` recipe in the profile's dtype.

    >>> run = size_to_data("gpu", 500_000_000, vocab_size=50257)      # a corpus of half a billion tokens
    >>> run.config.num_layers, run.config.width, round(run.tokens_per_param), round(run.passes, 1)
    (12, 768, 20, 3.4)
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    check_int("train_tokens", train_tokens)
    check_int("vocab_size", vocab_size)
    if profile.name in ("ci", "cpu"):
        return SizedRun(config=GPTConfig.for_profile(profile, vocab_size=vocab_size),
                        train=TrainConfig.for_profile(profile), train_tokens=train_tokens,
                        reason=f"the {profile.name} preset, sized to its time budget")
    for layers, width, batch, seq_len, accumulation, lr in reversed(RUNGS):
        config = GPTConfig.for_profile(profile, vocab_size=vocab_size, num_layers=layers, width=width,
                                       num_heads=width // 64, mlp_width=4 * width, max_len=seq_len)
        tokens = TOKENS_PER_PARAM * non_embedding_params(config)
        if tokens <= MAX_PASSES * train_tokens:
            steps = -(-tokens // (accumulation * batch * seq_len))
            train = TrainConfig.for_profile(profile, steps=steps, batch_size=batch, seq_len=seq_len,
                                            accumulation=accumulation, learning_rate=lr, final_learning_rate=lr / 10,
                                            warmup_steps=min(500, steps // 10),
                                            eval_every=max(1, min(250, steps // 10)),
                                            checkpoint_every=max(1, min(500, steps // 4)))
            return SizedRun(config=config, train=train, train_tokens=train_tokens,
                            reason=f"the largest model that {TOKENS_PER_PARAM} tokens per parameter in at most "
                                   f"{MAX_PASSES} passes allow")
    cpu = get_profile("cpu")  # `tokens` is now what the smallest rung would train on
    return SizedRun(config=GPTConfig.for_profile(cpu, vocab_size=vocab_size, dtype=profile.compute_dtype,
                                                 remat=profile.remat),
                    train=TrainConfig.for_profile(cpu), train_tokens=train_tokens,
                    reason=f"the cpu recipe: a larger model needs {-(-tokens // MAX_PASSES):,} training tokens")
