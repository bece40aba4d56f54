"""Model configs and size presets as plain dataclasses: no jax import, so a config file that
uses them loads in milliseconds (``configs/*.py``, ``--config_help``).

Every model module (``models/<name>.py``) has one config class here; :mod:`models.registry`
maps ``config.model.name`` to the pair.
"""
from __future__ import annotations

import dataclasses
from typing import Any


class _Dict:
  """``to_dict`` / ``from_dict`` with a clear error for unknown keys."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; valid: {sorted(names)}.")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(d).items()})


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Dict):
  """The Llama-style decoder of :mod:`models.transformer`."""
  vocab_size: int = 384
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 32
  mlp_dim: int = 384
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  dtype: str = "float32"  # compute dtype (activations, matmul inputs)
  param_dtype: str = "float32"
  remat: bool = False  # rematerialize each block in the backward pass
  fp8_activations: bool = False  # COAT: keep backward-pass activations in E4M3 (models/fp8_act)
  # 0: dense attention (the [T, T] scores are materialized and saved for the backward pass);
  # > 0: blockwise attention with this query/key block (models/blockwise_attention.py).
  attention_block: int = 0

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                 "mlp_dim"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1.")
    if int(self.attention_block) < 0:
      raise ValueError(f"model.attention_block={self.attention_block} must be >= 0 "
                       "(0 = dense attention).")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads="
                       f"{self.n_kv_heads} (grouped-query attention).")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE.")

  def num_params(self) -> int:
    attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    per_layer = attn + mlp + 2 * self.d_model
    embed = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return self.n_layers * per_layer + embed + self.d_model

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (6N for the weights + attention scores), as in PaLM/MaxText."""
    n_matmul = self.num_params() - self.vocab_size * self.d_model * (
        1 if self.tie_embeddings else 0) - self.d_model * (2 * self.n_layers + 1)
    if self.tie_embeddings:
      n_matmul += self.vocab_size * self.d_model  # the tied output projection is a matmul
    attn = 6 * self.n_layers * self.n_heads * self.head_dim * seq_len  # QK^T and AV, causal avg x2
    return 6.0 * n_matmul + attn


# Sizes: tiny/small train on a CPU; 1b and 7b follow Llama-3.2-1B and Llama-2-7B shapes.
TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=384, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                 mlp_dim=384),
    "small": dict(vocab_size=384, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4,
                  head_dim=32, mlp_dim=768),
    "1b": dict(vocab_size=128_256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
               head_dim=64, mlp_dim=8192, rope_theta=500_000.0, dtype="bfloat16", remat=True),
    "7b": dict(vocab_size=32_000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
               head_dim=128, mlp_dim=11008, tie_embeddings=False, dtype="bfloat16", remat=True),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in TRANSFORMER_PRESETS:
    raise ValueError(f"unknown model size {name!r}; available: {sorted(TRANSFORMER_PRESETS)}.")
  return ModelConfig(**{**TRANSFORMER_PRESETS[name], **overrides})


PEFT_METHODS = ("lora", "ia3")
PEFT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "embed", "lm_head")


@dataclasses.dataclass(frozen=True)
class PeftConfig(ModelConfig):
  """The decoder of :mod:`models.transformer` with a frozen base and a small trainable part
  (:mod:`models.lora`): ``peft="lora"`` (rank ``lora_rank``, scale ``lora_alpha / lora_rank``)
  or ``peft="ia3"`` (learned rescaling vectors) on the projections named in ``peft_targets``."""
  peft: str = "lora"
  lora_rank: int = 8
  lora_alpha: float = 16.0
  peft_targets: tuple[str, ...] = ("q_proj", "v_proj")

  def __post_init__(self):
    super().__post_init__()
    if self.peft not in PEFT_METHODS:
      raise ValueError(f"model.peft={self.peft!r} is not one of {PEFT_METHODS}.")
    if int(self.lora_rank) < 1:
      raise ValueError(f"model.lora_rank={self.lora_rank} must be >= 1.")
    bad = [t for t in self.peft_targets if t not in PEFT_TARGETS]
    if bad or not self.peft_targets:
      raise ValueError(f"model.peft_targets={tuple(self.peft_targets)} must be a non-empty "
                       f"subset of {PEFT_TARGETS} (unknown: {bad}).")
    if self.peft == "ia3" and {"embed", "lm_head"} & set(self.peft_targets):
      raise ValueError("IA3 rescales projections; drop 'embed'/'lm_head' from "
                       "model.peft_targets or use model.peft='lora'.")
    if "lm_head" in self.peft_targets and self.tie_embeddings:
      raise ValueError("peft target 'lm_head' needs model.tie_embeddings=False (a tied model "
                       "has no separate output projection; target 'embed' instead).")


@dataclasses.dataclass(frozen=True)
class ConvNetConfig(_Dict):
  """The small image classifier of :mod:`models.convnet`: conv blocks, then an MLP head."""
  image_size: int = 8
  in_channels: int = 1
  num_classes: int = 10
  channels: tuple[int, ...] = (16, 32)  # one 3x3 conv (+ ReLU, 2x2 mean pool) per entry
  hidden: int = 64
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.image_size < 1 or self.in_channels < 1 or self.num_classes < 2 or self.hidden < 1:
      raise ValueError(f"ConvNetConfig needs image_size, in_channels, hidden >= 1 and "
                       f"num_classes >= 2, got {self}.")
    if any(int(c) < 1 for c in self.channels):
      raise ValueError(f"ConvNetConfig.channels={self.channels} must be positive.")
    if self.image_size % (2 ** len(self.channels)):
      raise ValueError(f"image_size={self.image_size} must be divisible by 2**len(channels)="
                       f"{2 ** len(self.channels)} (each conv block halves it).")


@dataclasses.dataclass(frozen=True)
class EncDecConfig(_Dict):
  """The attention encoder-decoder ASR model of :mod:`models.encdec` (Canary-style): log-mel
  front end, 8x conv subsampling, Conformer encoder, Transformer decoder with cross-attention.
  """
  vocab_size: int = 259  # the byte tokenizer's 256 + pad/bos/eos
  d_model: int = 64
  n_heads: int = 4
  head_dim: int = 16
  enc_layers: int = 2
  dec_layers: int = 2
  mlp_dim: int = 256  # SwiGLU hidden width (encoder FFNs and decoder MLPs)
  conv_kernel: int = 9  # depthwise conv of the Conformer conv module (odd: symmetric)
  subsampling_channels: int = 64  # channels of the three stride-2 conv subsampling stages
  n_mels: int = 80
  sample_rate: int = 16_000
  bos_id: int = 1
  eos_id: int = 2
  pad_id: int = 0
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False  # rematerialize each encoder/decoder block in the backward pass
  # > 0: a CTC head on the encoder output (blank = pad_id) whose loss joins the decoder's
  # cross-entropy with this weight (hybrid CTC/attention training; models/encdec.py).
  ctc_weight: float = 0.0

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_heads", "head_dim", "enc_layers", "mlp_dim",
                 "subsampling_channels", "n_mels", "dec_layers"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1.")
    if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
      raise ValueError(f"model.conv_kernel={self.conv_kernel} must be odd and >= 1 (a "
                       "symmetric 'same' convolution).")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE.")
    if not 0.0 <= self.ctc_weight < 1.0:
      raise ValueError(f"model.ctc_weight={self.ctc_weight} must be in [0, 1): the CTC "
                       "loss's share (0 = attention decoder only).")
    if self.n_mels % 8:
      raise ValueError(f"model.n_mels={self.n_mels} must be divisible by 8 (three stride-2 "
                       "subsampling stages halve the mel axis).")
    for name in ("bos_id", "eos_id", "pad_id"):
      if not 0 <= int(getattr(self, name)) < self.vocab_size:
        raise ValueError(f"model.{name}={getattr(self, name)} must be in [0, vocab_size="
                         f"{self.vocab_size}).")

  def num_params(self) -> int:
    """Parameters of :mod:`models.encdec` (tied output embedding)."""
    d, a, m, c = self.d_model, self.n_heads * self.head_dim, self.mlp_dim, \
        self.subsampling_channels
    sub = 9 * c + c + 2 * (9 * c * c + c) + c * (self.n_mels // 8) * d  # convs have biases
    enc_block = 4 * d * m + 4 * d * a + 3 * d * d + self.conv_kernel * d + 6 * d
    dec_block = 8 * d * a + 3 * d * m + 3 * d
    ctc_head = self.vocab_size * d if self.ctc_weight > 0 else 0
    return (sub + self.enc_layers * enc_block + self.dec_layers * dec_block
            + self.vocab_size * d + d + ctc_head)
