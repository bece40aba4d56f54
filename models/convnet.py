"""A small convolutional image classifier: ``[conv 3x3 -> ReLU -> 2x2 mean pool] * n``, then an
MLP head (``Linear -> ReLU -> Linear``) to class logits.

The second model of the project (digits classification, the privacy audits' victim): it shows
that training, sharding and post-training quantization are not language-model-only. The head
uses :class:`models.layers.Linear`, so its layers quantize like the transformer's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models import functional
from models.configs import ConvNetConfig
from models.layers import Linear

Config = ConvNetConfig


class ConvNet(nnx.Module):

  def __init__(self, cfg: ConvNetConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    chans = (cfg.in_channels,) + tuple(cfg.channels)
    self.convs = nnx.List([nnx.Conv(cin, cout, (3, 3), padding="SAME", param_dtype=pd,
                                    rngs=rngs) for cin, cout in zip(chans[:-1], chans[1:])])
    side = cfg.image_size // 2 ** len(cfg.channels)
    flat = side * side * chans[-1]
    self.hidden = Linear(flat, cfg.hidden, logical_axes=(None, None), rngs=rngs, param_dtype=pd)
    self.out = Linear(cfg.hidden, cfg.num_classes, logical_axes=(None, None), rngs=rngs,
                      param_dtype=pd)

  def __call__(self, images):
    """images ``[B, H, W, C]`` (any float scale) -> logits ``[B, num_classes]`` (f32)."""
    x = images.astype(jnp.dtype(self.cfg.dtype))
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
      b, h, w, c = x.shape
      x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.out(x).astype(jnp.float32)


def init(cfg: ConvNetConfig, seed: int = 0):
  return functional.init(lambda rngs: ConvNet(cfg, rngs=rngs), seed)


def abstract_params(cfg: ConvNetConfig):
  return functional.abstract_params(lambda rngs: ConvNet(cfg, rngs=rngs))


def logical_axes(cfg: ConvNetConfig):
  return functional.logical_axes(lambda rngs: ConvNet(cfg, rngs=rngs))


def forward(model: ConvNet, batch):
  """How the model consumes a batch ``{images, labels}`` (PTQ, tasks)."""
  return model(batch["images"])


def apply(graphdef, params, images):
  """Pure forward pass: logits ``[B, num_classes]``."""
  return functional.merge(graphdef, params)(images)
