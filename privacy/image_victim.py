"""The image audit's victim: the project's convnet (:mod:`models.convnet`) on 16x16 digits,
trained briefly on the ``victim`` part, with its mean cross-entropy as the client's loss.

``features`` is the convnet's representation, the input of its last layer ``out`` (what
representation pruning looks at and what the report's feature distance compares).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import convnet, functional
from models.configs import ConvNetConfig
from privacy import client

CONFIG = ConvNetConfig(image_size=16, channels=(16, 32), hidden=64)
LABEL_LAYER = "out/kernel"


def loss(graphdef, params, batch):
  """Mean cross-entropy of ``batch = {images [B,16,16,1], labels [B]}``."""
  logits = convnet.apply(graphdef, params, batch["images"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def features(graphdef, params, batch):
  """The input of the last layer, ``relu(hidden(flatten(conv blocks(images))))``:
  ``[B, hidden]``."""
  model = functional.merge(graphdef, params)
  x = batch["images"]
  for conv in model.convs:
    x = jax.nn.relu(conv(x))
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return jax.nn.relu(model.hidden(x.reshape(x.shape[0], -1)))


def train(data: dict, *, steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
          seed: int = 0, cfg: ConvNetConfig = CONFIG):
  """``(graphdef, params, train accuracy)`` after ``steps`` Adam steps on ``data``."""
  graphdef, params = convnet.init(cfg, seed)
  tx = optax.adam(lr)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    g = jax.grad(lambda p: loss(graphdef, p, batch))(params)
    upd, state = tx.update(g, state, params)
    return optax.apply_updates(params, upd), state

  rng = np.random.default_rng(seed)
  n = len(data["labels"])
  for _ in range(steps):
    idx = rng.choice(n, min(batch_size, n), replace=False)
    params, state = step(params, state, {k: v[idx] for k, v in data.items()})
  acc = float(jnp.mean(jnp.argmax(convnet.apply(graphdef, params, data["images"]), -1)
                       == data["labels"]))
  return graphdef, params, acc


def victim(graphdef, params, layers=None) -> client.Victim:
  """The :class:`privacy.client.Victim` of this model (one loss object: jit caches hit)."""
  return client.Victim(functools.partial(loss, graphdef), params,
                       layers=None if layers is None else tuple(layers),
                       features_fn=functools.partial(features, graphdef))
