"""Image gradient-inversion attacks: DLG, Inverting Gradients, latent-only search and GIFD.

Every attack matches the gradient ``g'(x)`` of a candidate batch ``x`` (labels inferred from
the last layer, :func:`infer_labels`) to the shared gradient ``g``:

* **DLG** (Zhu et al., NeurIPS 2019): ``||g' - g||_2^2`` over pixels, L-BFGS (``optax.lbfgs``
  with its zoom line search), unconstrained pixels.
* **IG**, Inverting Gradients (Geiping et al., NeurIPS 2020): ``1 - <g', g> / (||g'|| ||g||)``
  (all layers together) ``+ tv * TV(x)``, Adam on the gradient's sign with a decaying
  learning rate (the ramp below; breaching decays IG's in steps), pixels boxed to [0, 1].
* **latent** (GI-z / GGL-like latent search): the same cosine loss over ``x = G(z)``, Adam on
  ``z`` with a spherical projection that keeps each ``||z||`` (GIFD's stage 0).
* **GIFD** (Fang et al., ICCV 2023): stage 0 is the latent search; stage ``k >= 1`` takes the
  input ``h`` of generator block ``k`` produced by the previous stage's solution, optimises it
  and after every step projects it onto the l1 ball ``||h - h_0||_1 <= r_k`` around its stage
  start (:func:`project_l1_ball`), with ``r_k = radius_k * numel(h)`` (radii scaled to the
  feature size). Loss: cosine + 1e-4 TV + 1e-6 ||x||^2. The answer is the (restart, stage)
  with the lowest gradient loss (GIFD's ``choose_optimal``, without its quirk of returning the
  last restart's image).

``meta`` holds ``shape`` (``[B, H, W, C]``), ``labels`` (None: inferred), ``prior``
(``(graphdef, params, cfg)`` of a :mod:`models.dcgan` generator, for latent and GIFD), and
step counts (``steps``, ``stage_steps``, ``restarts``, ``radii``, ``lr``, ``tv``).
TV is the anisotropic mean ``|x[i+1, j] - x[i, j]| + |x[i, j+1] - x[i, j]|`` (GIFD's metrics).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

from models import dcgan, functional
from privacy import attacks, client, defenses

LABEL_LAYER = "out/kernel"


# --- pieces ---------------------------------------------------------------------------------


def infer_labels(shared_grads, batch_size: int, layer: str = LABEL_LAYER) -> jax.Array:
  """Labels from the last layer's weight gradient (iDLG, Zhao et al. 2020; GIFD's
  ``infer_label``): with ``logits = r W`` and ReLU features ``r >= 0``, column ``c`` of
  ``dL/dW = r^T (p - y)`` sums to ``sum(r) (p_c - y_c)``, negative only for the true label at
  batch 1. At batch ``B`` the ``B`` most negative column sums (distinct labels assumed)."""
  w = defenses.get_leaf(shared_grads, layer)
  if w.ndim != 2:
    raise ValueError(f"label inference reads a kernel [in, classes]; {layer!r} has shape "
                     f"{w.shape}.")
  if batch_size > w.shape[1]:
    raise ValueError(f"label inference assumes distinct labels: batch_size={batch_size} is "
                     f"more than the {w.shape[1]} classes.")
  return jnp.argsort(w.sum(axis=0))[:batch_size].astype(jnp.int32)


def project_l1_ball(v: jax.Array, radius) -> jax.Array:
  """Euclidean projection of each row of ``v`` (``[B, ...]``) onto ``{||x||_1 <= radius}``
  (Duchi et al., ICML 2008, sort-based): ``sign(v) max(|v| - theta, 0)`` with the ``theta``
  that makes the l1 norm equal ``radius``; rows already inside are unchanged."""
  flat = v.reshape(v.shape[0], -1)
  a = jnp.abs(flat)
  u = -jnp.sort(-a, axis=1)  # descending
  css = jnp.cumsum(u, axis=1)
  j = jnp.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
  radius = jnp.broadcast_to(jnp.asarray(radius, flat.dtype), (flat.shape[0],))
  positive = u - (css - radius[:, None]) / j > 0
  rho = jnp.maximum(jnp.sum(positive, axis=1), 1)  # the last index where it holds (monotone)
  theta = (jnp.take_along_axis(css, rho[:, None] - 1, axis=1)[:, 0] - radius) / rho
  projected = jnp.sign(flat) * jnp.maximum(a - theta[:, None], 0.0)
  inside = a.sum(axis=1) <= radius
  return jnp.where(inside[:, None], flat, projected).reshape(v.shape)


def total_variation(x: jax.Array) -> jax.Array:
  return (jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1])) + jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1])))


def cosine_loss(g_candidate, g_shared) -> jax.Array:
  """``1 - <g', g> / (||g'|| ||g||)`` over all layers together (GIFD's ``sim_cmpr0``)."""
  a, b = client.flat(g_candidate), client.flat(g_shared)
  return 1 - jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-12)


def l2_loss(g_candidate, g_shared) -> jax.Array:
  """``||g' - g||_2^2`` (DLG)."""
  return jnp.sum((client.flat(g_candidate) - client.flat(g_shared)) ** 2)


GRADIENT_LOSSES = {"cosine": cosine_loss, "l2": l2_loss}


# --- objectives and optimisers (cached so that repeated attacks reuse the compiled code) ------


@functools.lru_cache(maxsize=64)
def _objective(loss_fn, paths, match, gdef, start, tv, norm):
  """``f(x, aux) -> scalar``: the gradient-matching loss of the images decoded from ``x``
  (``x`` itself when ``gdef`` is None; else generator blocks ``start..``)."""

  def f(x, aux):
    images = x if gdef is None else dcgan.decode_from(gdef, aux["gen"], x, start)
    g = client.gradient(loss_fn, aux["params"], {"images": images, "labels": aux["labels"]},
                        list(paths))
    out = GRADIENT_LOSSES[match](g, aux["target"])
    if tv:
      out = out + tv * total_variation(images)
    if norm:
      out = out + norm * jnp.mean(images ** 2)
    return out

  return f


def _project(kind, x, anchor, radius):
  if kind == "box":
    return jnp.clip(x, 0.0, 1.0)
  if kind == "sphere":  # keep each latent's norm (GIFD's SphericalOptimizer)
    norm = jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=1)
    target = jnp.linalg.norm(anchor.reshape(anchor.shape[0], -1), axis=1)
    return x * (target / jnp.maximum(norm, 1e-12)).reshape((-1,) + (1,) * (x.ndim - 1))
  if kind == "l1":
    return anchor + project_l1_ball(x - anchor, radius)
  return x


def _schedule(lr, steps):
  """GIFD's lr ramp: cosine ramp-up over the first 5%, cosine ramp-down over the last 75%."""
  def s(t):
    frac = t / steps
    down = jnp.minimum(1.0, (1 - frac) / 0.75)
    up = jnp.minimum(1.0, frac / 0.05)
    return lr * (0.5 - 0.5 * jnp.cos(jnp.pi * down)) * (0.5 - 0.5 * jnp.cos(jnp.pi * up))
  return s


@functools.partial(jax.jit, static_argnames=("objective", "steps", "lr", "signed", "project",
                                             "ramp"))
def _adam(objective, x0, aux, anchor, radius, *, steps, lr, signed, project, ramp):
  tx = optax.adam(_schedule(lr, steps) if ramp else lr)

  def body(carry, _):
    x, state = carry
    g = jax.grad(objective)(x, aux)
    g = jnp.sign(g) if signed else g
    upd, state = tx.update(g, state, x)
    return (_project(project, optax.apply_updates(x, upd), anchor, radius), state), None

  (x, _), _ = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
  return x, objective(x, aux)


@functools.partial(jax.jit, static_argnames=("objective", "steps"))
def _lbfgs(objective, x0, aux, *, steps):
  tx = optax.lbfgs()
  f = lambda x: objective(x, aux)
  value_and_grad = optax.value_and_grad_from_state(f)

  def body(carry, _):
    x, state = carry
    value, g = value_and_grad(x, state=state)
    upd, state = tx.update(g, state, x, value=value, grad=g, value_fn=f)
    x = optax.apply_updates(x, upd)
    return (jnp.where(jnp.isfinite(x), x, 0.5), state), None  # a diverged step restarts flat

  (x, _), _ = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
  return x, f(x)


# --- attacks --------------------------------------------------------------------------------


def _setup(shared_grads, model, meta):
  shape = tuple(meta["shape"])
  labels = meta.get("labels")
  if labels is None:
    labels = infer_labels(shared_grads, shape[0], meta.get("label_layer", LABEL_LAYER))
  aux = {"params": model.params, "target": shared_grads, "labels": jnp.asarray(labels)}
  return shape, aux, tuple(model.paths)


def _prior(meta):
  if meta.get("prior") is None:
    raise ValueError("this attack searches a generator's domains: pass meta['prior'] = "
                     "(graphdef, params, cfg) of a models.dcgan generator (privacy.prior.load).")
  return meta["prior"]


@attacks.register("dlg")
def dlg(shared_grads, model, meta, key):
  shape, aux, paths = _setup(shared_grads, model, meta)
  objective = _objective(model.loss_fn, paths, "l2", None, 0, 0.0, 0.0)
  x0 = jax.random.uniform(key, shape)
  x, _ = _lbfgs(objective, x0, aux, steps=int(meta.get("dlg_steps", meta.get("steps", 300))))
  return jnp.clip(x, 0, 1)


@attacks.register("ig")
def inverting_gradients(shared_grads, model, meta, key):
  shape, aux, paths = _setup(shared_grads, model, meta)
  objective = _objective(model.loss_fn, paths, "cosine", None, 0, float(meta.get("tv", 1e-2)),
                         0.0)
  x0 = jax.random.uniform(key, shape)
  x, _ = _adam(objective, x0, aux, x0, 0.0, steps=int(meta.get("steps", 1000)),
               lr=float(meta.get("lr", 0.1)), signed=True, project="box", ramp=True)
  return x


def _latent_stage(model, meta, aux, paths, z0, steps):
  gdef, gen, _ = _prior(meta)
  objective = _objective(model.loss_fn, paths, "cosine", gdef, 0, 1e-4, 1e-6)
  z, loss = _adam(objective, z0, {**aux, "gen": gen}, z0, 0.0, steps=steps,
                  lr=float(meta.get("lr", 0.1)), signed=False, project="sphere", ramp=True)
  return z, loss


def gifd_search(shared_grads, model, meta, key, *, stages: int | None = None):
  """All ``(restart, stage, gradient loss, images)`` of GIFD's search (``stages=1``: the
  latent search only)."""
  shape, aux, paths = _setup(shared_grads, model, meta)
  gdef, gen, cfg = _prior(meta)
  steps = int(meta.get("stage_steps", 300))
  radii = tuple(meta.get("radii", (0.05, 0.05)))
  n_stages = dcgan.NUM_BLOCKS if stages is None else stages
  if not 1 <= n_stages <= dcgan.NUM_BLOCKS or len(radii) < n_stages - 1:
    raise ValueError(f"GIFD runs 1..{dcgan.NUM_BLOCKS} stages with one radius per feature "
                     f"stage; got stages={n_stages}, radii={radii}.")
  out = []
  for r in range(int(meta.get("restarts", 2))):
    z0 = jax.random.normal(jax.random.fold_in(key, r), (shape[0], cfg.z_dim))
    h, loss = _latent_stage(model, meta, aux, paths, z0, steps)
    out.append((r, 0, float(loss), dcgan.decode_from(gdef, gen, h, 0)))
    for k in range(1, n_stages):
      # the stage start: the previous stage's solution pushed through one more block
      h0 = dcgan.run_blocks(functional.merge(gdef, gen), h, k - 1, k)
      radius = radii[k - 1] * math.prod(h0.shape[1:])
      objective = _objective(model.loss_fn, paths, "cosine", gdef, k, 1e-4, 1e-6)
      h, loss = _adam(objective, h0, {**aux, "gen": gen}, h0, radius, steps=steps,
                      lr=float(meta.get("lr", 0.1)), signed=False, project="l1", ramp=True)
      out.append((r, k, float(loss), dcgan.decode_from(gdef, gen, h, k)))
  return out


@attacks.register("latent")
def latent_search(shared_grads, model, meta, key):
  return min(gifd_search(shared_grads, model, meta, key, stages=1), key=lambda t: t[2])[3]


@attacks.register("gifd")
def gifd(shared_grads, model, meta, key):
  return min(gifd_search(shared_grads, model, meta, key), key=lambda t: t[2])[3]
