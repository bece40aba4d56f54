"""A small DCGAN (Radford et al., ICLR 2016) for 16x16 single-channel images: the generative
prior of the GIFD audit (:mod:`privacy.prior`, :mod:`privacy.attacks.image`).

Generator, as a chain of blocks whose outputs are GIFD's *feature domains* (Fang et al.,
ICCV 2023, Sec. 3: the attack searches z first, then each intermediate feature in turn)::

    block 0: z [B, z_dim] -> Linear -> reshape [B, 4, 4, c0] -> ReLU          (domain 1)
    block 1: ConvTranspose 4x4 stride 2 -> [B, 8, 8, c1] -> ReLU              (domain 2)
    block 2: ConvTranspose 4x4 stride 2 -> [B, 16, 16, 1] -> sigmoid (pixels in [0, 1])

``run_blocks(gen, x, start)`` continues from the input of block ``start``, so an attacker can
replace any intermediate feature and decode it. Discriminator: two strided 4x4 convs with
leaky ReLU, then a linear logit.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models import functional


@dataclasses.dataclass(frozen=True)
class Config:
  z_dim: int = 32
  channels: tuple[int, int] = (64, 32)  # block 0 and block 1 output channels
  disc_channels: tuple[int, int] = (32, 64)
  image_size: int = 16

  def __post_init__(self):
    if self.image_size != 16:
      raise ValueError(f"this DCGAN makes 16x16 images (4 -> 8 -> 16), got image_size="
                       f"{self.image_size}.")
    if self.z_dim < 1 or min(self.channels + self.disc_channels) < 1:
      raise ValueError(f"DCGAN sizes must be positive, got {self}.")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d) -> "Config":
    d = dict(d)
    for k in ("channels", "disc_channels"):
      if k in d:
        d[k] = tuple(int(c) for c in d[k])
    return cls(**d)


class Generator(nnx.Module):

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    c0, c1 = cfg.channels
    self.cfg = cfg
    self.fc = nnx.Linear(cfg.z_dim, 4 * 4 * c0, rngs=rngs)
    self.up1 = nnx.ConvTranspose(c0, c1, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
    self.up2 = nnx.ConvTranspose(c1, 1, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)

  def block(self, k: int, x):
    if k == 0:
      return jax.nn.relu(self.fc(x).reshape(x.shape[0], 4, 4, self.cfg.channels[0]))
    if k == 1:
      return jax.nn.relu(self.up1(x))
    return jax.nn.sigmoid(self.up2(x))

  def __call__(self, z):
    return run_blocks(self, z, 0)


NUM_BLOCKS = 3


def run_blocks(gen: Generator, x, start: int = 0, stop: int = NUM_BLOCKS):
  """Blocks ``start .. stop-1`` applied to ``x`` (the input of block ``start``)."""
  if not 0 <= start <= stop <= NUM_BLOCKS:
    raise ValueError(f"blocks run from start to stop within 0..{NUM_BLOCKS}, got "
                     f"start={start}, stop={stop}.")
  for k in range(start, stop):
    x = gen.block(k, x)
  return x


class Discriminator(nnx.Module):

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    d0, d1 = cfg.disc_channels
    self.conv1 = nnx.Conv(1, d0, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(d0, d1, (4, 4), strides=(2, 2), padding="SAME", rngs=rngs)
    self.head = nnx.Linear(4 * 4 * d1, 1, rngs=rngs)

  def __call__(self, images):
    """images ``[B, 16, 16, 1]`` in [0, 1] -> real/fake logits ``[B]``."""
    x = jax.nn.leaky_relu(self.conv1(images * 2 - 1), 0.2)
    x = jax.nn.leaky_relu(self.conv2(x), 0.2)
    return self.head(x.reshape(x.shape[0], -1))[:, 0]


def init(cfg: Config, seed: int = 0):
  """``((gen_graphdef, gen_params), (disc_graphdef, disc_params))``."""
  return (functional.init(lambda rngs: Generator(cfg, rngs=rngs), seed),
          functional.init(lambda rngs: Discriminator(cfg, rngs=rngs), seed + 1))


def abstract_generator_params(cfg: Config):
  return functional.abstract_params(lambda rngs: Generator(cfg, rngs=rngs))


def feature_shapes(cfg: Config) -> list[tuple[int, ...]]:
  """Per-example shape of each block's input: z, then each feature domain."""
  c0, c1 = cfg.channels
  return [(cfg.z_dim,), (4, 4, c0), (8, 8, c1)]


def sample(graphdef, params, z):
  return functional.merge(graphdef, params)(z)


def decode_from(graphdef, params, h, start: int):
  """Images from ``h``, the input of block ``start`` (0: the latent z)."""
  return run_blocks(functional.merge(graphdef, params), h, start)


def encode_to(graphdef, params, z, stop: int):
  """The input of block ``stop`` produced from latent ``z``."""
  return run_blocks(functional.merge(graphdef, params), z, 0, stop)


def disc_logits(graphdef, params, images):
  return functional.merge(graphdef, params)(images).astype(jnp.float32)
