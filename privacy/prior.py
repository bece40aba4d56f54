"""The GIFD audit's generative prior: a DCGAN (:mod:`models.dcgan`) trained on the ``prior``
part of the digits, saved and loaded as an Orbax export (:mod:`core.checkpoint`).

A small standalone trainer (two optimizers, alternating steps) rather than a ``train/``
strategy: the non-saturating GAN losses (Goodfellow et al. 2014) with Adam(2e-4, b1=0.5) as in
DCGAN (Radford et al. 2016)::

    L_D = softplus(-D(x)) + softplus(D(G(z)))      L_G = softplus(-D(G(z)))
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core import checkpoint
from models import dcgan


@functools.partial(jax.jit, static_argnames=("gdef", "ddef", "tx", "z_dim"))
def _step(gp, dp, g_state, d_state, real, key, *, gdef, ddef, tx, z_dim):
  z = jax.random.normal(key, (real.shape[0], z_dim))

  def d_loss(dp):
    fake = jax.lax.stop_gradient(dcgan.sample(gdef, gp, z))
    return jnp.mean(jax.nn.softplus(-dcgan.disc_logits(ddef, dp, real))
                    + jax.nn.softplus(dcgan.disc_logits(ddef, dp, fake)))

  def g_loss(gp):
    return jnp.mean(jax.nn.softplus(-dcgan.disc_logits(ddef, dp, dcgan.sample(gdef, gp, z))))

  ld, dg = jax.value_and_grad(d_loss)(dp)
  upd, d_state = tx.update(dg, d_state, dp)
  dp = optax.apply_updates(dp, upd)
  lg, gg = jax.value_and_grad(g_loss)(gp)
  upd, g_state = tx.update(gg, g_state, gp)
  gp = optax.apply_updates(gp, upd)
  return gp, dp, g_state, d_state, ld, lg


def train(images: np.ndarray, *, cfg: dcgan.Config = dcgan.Config(), steps: int = 3000,
          batch_size: int = 64, lr: float = 2e-4, seed: int = 0, log=None):
  """Trains the DCGAN on ``images`` ``[N, 16, 16, 1]``; returns ``(graphdef, params, losses)``
  with ``losses`` the last step's ``(L_D, L_G)``."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1:] != (16, 16, 1):
    raise ValueError(f"the prior trains on [N, 16, 16, 1] images, got {images.shape}.")
  if len(images) < batch_size:
    raise ValueError(f"{len(images)} images are fewer than batch_size={batch_size}.")
  (gdef, gp), (ddef, dp) = dcgan.init(cfg, seed)
  tx = optax.adam(lr, b1=0.5)
  g_state, d_state = tx.init(gp), tx.init(dp)
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  ld = lg = float("nan")
  for step in range(steps):
    real = images[rng.choice(len(images), batch_size, replace=False)]
    gp, dp, g_state, d_state, ld, lg = _step(gp, dp, g_state, d_state, real,
                                             jax.random.fold_in(key, step), gdef=gdef,
                                             ddef=ddef, tx=tx, z_dim=cfg.z_dim)
    if log is not None and (step + 1) % 500 == 0:
      log(f"prior step {step + 1}/{steps}: L_D={float(ld):.3f} L_G={float(lg):.3f}")
  return gdef, gp, (float(ld), float(lg))


def save(path: str | os.PathLike, params, cfg: dcgan.Config, *, overwrite: bool = False,
         extra: dict | None = None):
  """The generator's params as an export at ``path`` (refuses to replace one unless asked)."""
  return checkpoint.save_export(path, params, model={"name": "dcgan", **cfg.to_dict()},
                                dtype="float32", extra=extra, overwrite=overwrite)


def load(path: str | os.PathLike):
  """``(graphdef, params, cfg, metadata)`` of a generator saved by :func:`save`."""
  meta = checkpoint.read_export_metadata(path)
  model = dict(meta.get("model", {}))
  if model.pop("name", None) != "dcgan":
    raise ValueError(f"{path} is not a DCGAN prior export (model {meta.get('model')}).")
  cfg = dcgan.Config.from_dict(model)
  gdef, abstract = dcgan.abstract_generator_params(cfg)
  _, params = checkpoint.load_export(path, abstract)
  return gdef, params, cfg, meta
