"""The configuration of a GPT: every size and choice in one frozen dataclass, named presets, and the parameter count.

>>> config = GPTConfig.ci(num_layers=4)                     # a preset with an override
>>> config.head_width, param_count(config)
(16, 61120)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from labkit.attention import IMPLEMENTATIONS
from labkit.positions import POSITION_SCHEMES, ROPE_LAYOUTS
from labkit.profiles import Profile, get_profile

NORMS, MLPS, POSITIONS = ("layernorm", "rmsnorm"), ("gelu", "swiglu"), tuple(POSITION_SCHEMES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """Every size and choice of a GPT. Presets: ci, cpu, gpu, for_profile, gpt2_small, llama_style."""

    vocab_size: int  # V: number of token ids
    max_len: int  # longest sequence (context length); the positional table has this many rows
    num_layers: int  # L: number of Transformer blocks
    num_heads: int  # N: query heads per attention layer
    num_kv_heads: int | None = None  # K: key/value heads (None: = N; fewer: grouped-query attention)
    width: int  # D: width of the residual stream
    mlp_width: int  # F: hidden width of the feed-forward network
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (LLaMA)
    norm_eps: float = 1e-5  # epsilon added to the variance in the norms
    mlp: str = "gelu"  # "gelu" (GPT-2: D -> F -> D) or "swiglu" (LLaMA: silu(gate) * up, then down)
    gelu_approximate: bool = True  # tanh approximation of GELU, as GPT-2 ("gelu_new")
    positions: str = "learned"  # "learned" (GPT-2), "sinusoidal" (Vaswani et al.), "rotary" (RoPE, LLaMA), "alibi"
    rope_base: float = 10_000.0  # base of the rotary frequencies
    rope_layout: str = "half"  # rotated pairs: "half" (i, i + H/2; GPT-NeoX, HF) or "interleaved" (2i, 2i + 1; Meta)
    tie_embeddings: bool = True  # LM head reuses the token embedding matrix (GPT-2) instead of its own
    dropout: float = 0.0  # dropout rate on embeddings and on each residual branch (training only)
    bias: bool = True  # biases in the linear layers and LayerNorms (GPT-2 has them, LLaMA not)
    attention: str = "plain"  # "plain", "blockwise" (memory-efficient) or "jax" (the hardware's: see choose_kernel)
    block_size: int = 128  # key block size of the blockwise attention
    dtype: Any = jnp.float32  # compute dtype of activations (bf16 on GPU/TPU); parameters are always float32
    remat: bool = False  # activation checkpointing: each block's activations are recomputed in the backward pass
    init_std: float = 0.02  # standard deviation of the normal initialisation (GPT-2)

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        for name in ("vocab_size", "max_len", "num_layers", "num_heads", "num_kv_heads", "width", "mlp_width",
                     "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int; got {value!r}")
        if self.width % self.num_heads:
            raise ValueError(f"GPTConfig.width D={self.width} must be divisible by num_heads N={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"GPTConfig.num_heads N={self.num_heads} must be divisible by "
                             f"num_kv_heads K={self.num_kv_heads}")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS), ("attention", IMPLEMENTATIONS),
                              ("rope_layout", ROPE_LAYOUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.positions == "rotary" and self.head_width % 2:
            raise ValueError(f"GPTConfig: rotary positions need an even head width D/N; got {self.head_width}")
        if self.positions == "sinusoidal" and self.width % 2:
            raise ValueError(f"GPTConfig: sinusoidal positions need an even width D; got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1); got {self.dropout!r}")
        if not self.norm_eps > 0 or not self.init_std > 0 or not self.rope_base > 0:
            raise ValueError("GPTConfig.norm_eps, init_std and rope_base must be positive; "
                             f"got {self.norm_eps!r}, {self.init_std!r}, {self.rope_base!r}")
        if not isinstance(self.remat, bool):
            raise ValueError(f"GPTConfig.remat must be a bool; got {self.remat!r}")
        if not jnp.issubdtype(self.dtype, jnp.floating):
            raise ValueError(f"GPTConfig.dtype must be a floating-point dtype; got {self.dtype!r}")

    @property
    def head_width(self) -> int:
        """H = D / N."""
        return self.width // self.num_heads

    # ---- presets ----
    @classmethod
    def ci(cls, **overrides: Any) -> "GPTConfig":
        """Tiny (about 36k parameters): tests and the ``ci`` profile, seconds on a CPU."""
        return cls(**{**dict(vocab_size=256, max_len=64, num_layers=2, num_heads=2, width=32, mlp_width=128),
                      **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> "GPTConfig":
        """Small (about 0.86M parameters): trains for a few minutes on a 2-core laptop."""
        return cls(**{**dict(vocab_size=256, max_len=256, num_layers=4, num_heads=4, width=128, mlp_width=512),
                      **overrides})

    @classmethod
    def gpu(cls, **overrides: Any) -> "GPTConfig":
        """GPT-2-small-sized blocks (12 x 768) in bf16, attention by ``labkit.attention.choose_kernel`` (cuDNN's
        fused kernel on an NVIDIA GPU from Ampere on, labkit's blockwise attention on a TPU or an older GPU)."""
        return cls(**{**dict(vocab_size=256, max_len=1024, num_layers=12, num_heads=12, width=768, mlp_width=3072,
                             dtype=jnp.bfloat16, attention="jax"), **overrides})

    @classmethod
    def for_profile(cls, profile: Profile | str | None = None, **overrides: Any) -> "GPTConfig":
        """The preset of a compute profile (default: ``labkit.profiles.get_profile()``) in its compute dtype.

        ``tpu`` uses the ``gpu`` sizes; the profile also decides activation checkpointing (``remat``).
        """
        profile = profile if isinstance(profile, Profile) else get_profile(profile)
        defaults = {"dtype": profile.compute_dtype, "remat": profile.remat}
        return profile.pick(ci=cls.ci, cpu=cls.cpu, gpu=cls.gpu)(**{**defaults, **overrides})

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> "GPTConfig":
        """OpenAI's GPT-2 small: 124M parameters (Radford et al. 2019)."""
        return cls(**{**dict(vocab_size=50257, max_len=1024, num_layers=12, num_heads=12, width=768, mlp_width=3072),
                      **overrides})

    @classmethod
    def llama_style(cls, **overrides: Any) -> "GPTConfig":
        """A small LLaMA-style model (about 2.9M parameters): RMSNorm, SwiGLU, rotary positions, no biases and an
        untied head as in LLaMA (Touvron et al. 2023), plus grouped-query attention (2 key/value heads) as in
        Llama 3."""
        return cls(**{**dict(vocab_size=256, max_len=256, num_layers=4, num_heads=8, num_kv_heads=2, width=256,
                             mlp_width=688, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", positions="rotary",
                             tie_embeddings=False, bias=False), **overrides})


def param_count(config: GPTConfig) -> int:
    """Number of parameters of ``GPT(config)``, by formula (equals ``count_params`` of the built model)."""
    d, f, v, h, layers = config.width, config.mlp_width, config.vocab_size, config.head_width, config.num_layers
    b = int(config.bias)
    norm = d * (2 if config.norm == "layernorm" and config.bias else 1)  # scale (and bias)
    q_out, kv_out = config.num_heads * h, config.num_kv_heads * h
    attn = d * q_out + 2 * d * kv_out + q_out * d + b * (q_out + 2 * kv_out + d)
    mlp = 2 * d * f + b * (f + d) if config.mlp == "gelu" else 3 * d * f + b * (2 * f + d)
    embed = v * d + (config.max_len * d if POSITION_SCHEMES[config.positions].learned else 0)
    head = 0 if config.tie_embeddings else d * v
    return embed + layers * (2 * norm + attn + mlp) + norm + head
