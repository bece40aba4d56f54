r"""Policy-gradient losses for asynchronous RL: AReaL's decoupled PPO objective, standard PPO,
and GRPO-style group-normalized advantages.

AReaL (Fu et al., "AReaL: A Large-Scale Asynchronous Reinforcement Learning System for Language
Reasoning", arXiv:2505.24298, §4.2 Eq. 5, following Hilton et al.'s decoupled PPO) trains on
tokens sampled by a *behaviour* policy ``pi_behav`` (possibly several stale versions mixed in one
trajectory) but anchors the trust region at a *proximal* policy ``pi_prox`` (the parameters before
this update step, whose log-probs are recomputed when the batch arrives):

    J(theta) = E_{a_t ~ pi_behav} [ sum_t  w_t * min(u_t A_t, clip(u_t, 1 - eps, 1 + eps_high) A_t) ]

    u_t = pi_theta(a_t|s_t) / pi_prox(a_t|s_t),      w_t = pi_prox(a_t|s_t) / pi_behav(a_t|s_t)

``w_t`` is the importance weight that makes the off-policy expectation correct; it is *always*
applied here (AReaL's reference code drops it unless a rejection-sampling option is set, which is
exactly the silent mistake this module avoids), optionally capped: ``w_t <- min(w_t, cap)``.
With ``pi_behav = pi_prox`` it is 1 and the objective is standard PPO (Schulman et al. 2017,
arXiv:1707.06347). Losses are ``-J`` averaged over the valid (``mask == 1``) tokens.

Dual clip (Ye et al. 2020, arXiv:1912.09729): for ``A_t < 0`` the per-token loss is further
bounded by ``-c A_t`` (``c = dual_clip > 1``), so a huge ratio on a bad action cannot dominate.

All functions are pure ``jnp`` and jit-able; the argument checks run at trace time (on shapes and
Python floats), so bad input fails with one clear message before anything is compiled.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossStats(NamedTuple):
  """Diagnostics averaged over the valid tokens.

  clip_frac: fraction of tokens where the clipped branch of the surrogate is the active one.
  dual_clip_frac: fraction of tokens where the dual clip bound is active (0 without dual clip).
  behav_weight_mean: mean of the (capped) weight ``w = pi_prox/pi_behav`` (1 when on-policy).
  behav_weight_capped_frac: fraction of tokens where ``w`` exceeded the cap.
  approx_kl: ``E[(u - 1) - log u]`` with ``u = pi_theta/pi_prox`` (the non-negative "k3"
    estimator of KL(prox || theta)); 0 at the first minibatch of a step.
  behav_prox_kl: ``E[(w - 1) - log w]`` of the uncapped ``w``: the k3 estimate of
    KL(behav || prox) from tokens sampled by ``pi_behav``. Staleness makes it grow; at eta = 0 it
    should be ~0 (a large value on-policy means the sampler and trainer disagree on log-probs).
  num_tokens: the number of valid tokens.
  """
  clip_frac: jax.Array
  dual_clip_frac: jax.Array
  behav_weight_mean: jax.Array
  behav_weight_capped_frac: jax.Array
  approx_kl: jax.Array
  behav_prox_kl: jax.Array
  num_tokens: jax.Array


def _check_eps(clip_eps, clip_eps_high, dual_clip, behav_weight_cap=None):
  if not float(clip_eps) > 0:
    raise ValueError(f"clip_eps={clip_eps} must be > 0: it is the PPO trust-region half width "
                     "(AReaL uses 0.2).")
  if clip_eps_high is not None and not float(clip_eps_high) > 0:
    raise ValueError(f"clip_eps_high={clip_eps_high} must be > 0 (or None to use clip_eps).")
  if dual_clip is not None and not float(dual_clip) > 1:
    raise ValueError(f"dual_clip={dual_clip} must be > 1 (Ye et al. use 3), or None to disable.")
  if behav_weight_cap is not None and not float(behav_weight_cap) > 0:
    raise ValueError(f"behav_weight_cap={behav_weight_cap} must be > 0 (e.g. 5.0), or None for "
                     "no cap.")


def _check_shapes(logp, others: dict, advantages, mask):
  shape = jnp.shape(logp)
  for name, x in others.items():
    if jnp.shape(x) != shape:
      raise ValueError(f"{name} has shape {jnp.shape(x)} but logp has {shape}: pass one "
                       "log-prob per token, all with the same [batch, time] layout.")
  if jnp.shape(mask) != shape:
    raise ValueError(f"mask has shape {jnp.shape(mask)} but logp has {shape}: mask marks the "
                     "valid (generated) tokens of logp.")
  a = jnp.shape(advantages)
  if a != shape and a != shape[:-1]:
    raise ValueError(f"advantages has shape {a}; expected {shape} (per token) or {shape[:-1]} "
                     "(per sequence, broadcast over time).")


def _masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _clipped_surrogate_loss(log_ratio, adv, *, clip_eps, clip_eps_high, dual_clip):
  """Per-token ``-min(u A, clip(u) A)`` (with the optional dual clip) and its clip indicators."""
  high = clip_eps if clip_eps_high is None else clip_eps_high
  u = jnp.exp(log_ratio)
  loss_unclipped = -adv * u
  loss_clipped = -adv * jnp.clip(u, 1.0 - clip_eps, 1.0 + high)
  loss = jnp.maximum(loss_unclipped, loss_clipped)
  clipped = loss_clipped > loss_unclipped
  if dual_clip is None:
    dual = jnp.zeros_like(clipped)
  else:
    bound = -dual_clip * adv  # > 0 where A < 0
    dual = (adv < 0) & (loss > bound)
    loss = jnp.where(dual, bound, loss)
  return loss, u, clipped, dual


def decoupled_ppo_loss(logp, prox_logp, behav_logp, advantages, mask, *, clip_eps: float = 0.2,
                       clip_eps_high: float | None = None, dual_clip: float | None = None,
                       behav_weight_cap: float | None = None):
  r"""AReaL's decoupled PPO loss (arXiv:2505.24298 Eq. 5), averaged over valid tokens.

      loss = - sum_t m_t * w_t * min(u_t A_t, clip(u_t, 1 - eps, 1 + eps_high) A_t) / sum_t m_t
      u_t = exp(logp_t - prox_logp_t),   w_t = min(exp(prox_logp_t - behav_logp_t), cap)

  Args:
    logp: ``[B, T]`` log pi_theta(a_t|s_t) of the sampled tokens (the only differentiated input).
    prox_logp: ``[B, T]`` log pi_prox, recomputed with the parameters before this update step.
    behav_logp: ``[B, T]`` log pi_behav, recorded by the sampler when each token was generated.
    advantages: ``[B, T]`` or ``[B]`` (one per sequence, e.g. from
      :func:`group_normalized_advantages`).
    mask: ``[B, T]``, 1 for generated tokens that count, 0 for prompt and padding.
    clip_eps, clip_eps_high: the clip range ``[1 - clip_eps, 1 + clip_eps_high]``
      (``clip_eps_high=None``: symmetric; a larger high side is DAPO's "clip higher").
    dual_clip: ``c > 1`` bounds the loss of negative-advantage tokens by ``-c A`` (or None).
    behav_weight_cap: caps ``w_t`` (truncated importance sampling); None: no cap.

  Returns:
    ``(loss, LossStats)``; the loss is a scalar. Gradients flow through ``logp`` only: the two
    reference log-probs are constants (``stop_gradient``), as in the paper.
  """
  _check_eps(clip_eps, clip_eps_high, dual_clip, behav_weight_cap)
  _check_shapes(logp, {"prox_logp": prox_logp, "behav_logp": behav_logp}, advantages, mask)
  mask = jnp.asarray(mask, jnp.float32)
  prox_logp = jax.lax.stop_gradient(prox_logp)
  behav_logp = jax.lax.stop_gradient(behav_logp)
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
  if adv.ndim == mask.ndim - 1:
    adv = adv[..., None]
  # Masked positions may hold garbage (e.g. -inf log-probs of padding): zero their differences
  # so neither the loss nor its gradient sees a NaN there.
  log_u = jnp.where(mask > 0, logp - prox_logp, 0.0)
  log_w = jnp.where(mask > 0, prox_logp - behav_logp, 0.0)
  per_token, u, clipped, dual = _clipped_surrogate_loss(
      log_u, adv, clip_eps=clip_eps, clip_eps_high=clip_eps_high, dual_clip=dual_clip)
  w_raw = jnp.exp(log_w)
  w = w_raw if behav_weight_cap is None else jnp.minimum(w_raw, behav_weight_cap)
  loss = _masked_mean(w * per_token, mask)
  stats = LossStats(
      clip_frac=_masked_mean(clipped.astype(jnp.float32), mask),
      dual_clip_frac=_masked_mean(dual.astype(jnp.float32), mask),
      behav_weight_mean=_masked_mean(w, mask),
      behav_weight_capped_frac=_masked_mean((w_raw > w).astype(jnp.float32), mask),
      approx_kl=jax.lax.stop_gradient(_masked_mean((u - 1.0) - log_u, mask)),
      behav_prox_kl=_masked_mean((w_raw - 1.0) - log_w, mask),
      num_tokens=jnp.sum(mask))
  return loss, stats


def ppo_loss(logp, old_logp, advantages, mask, *, clip_eps: float = 0.2,
             clip_eps_high: float | None = None, dual_clip: float | None = None):
  r"""The standard clipped PPO loss (Schulman et al. 2017, arXiv:1707.06347), token-averaged:

      loss = - sum_t m_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t) / sum_t m_t,
      r_t = exp(logp_t - old_logp_t)

  In asynchronous RL ``old_logp`` is the behaviour log-prob, so the trust region is centred on a
  possibly stale policy: this is the "naive PPO" of AReaL's ablation (arXiv:2505.24298 Table 2),
  kept for comparison. Same arguments and stats as :func:`decoupled_ppo_loss` (``behav_*``
  fields are 1 / 0 here).
  """
  _check_eps(clip_eps, clip_eps_high, dual_clip)
  _check_shapes(logp, {"old_logp": old_logp}, advantages, mask)
  mask = jnp.asarray(mask, jnp.float32)
  old_logp = jax.lax.stop_gradient(old_logp)
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
  if adv.ndim == mask.ndim - 1:
    adv = adv[..., None]
  log_r = jnp.where(mask > 0, logp - old_logp, 0.0)
  per_token, r, clipped, dual = _clipped_surrogate_loss(
      log_r, adv, clip_eps=clip_eps, clip_eps_high=clip_eps_high, dual_clip=dual_clip)
  zero = jnp.zeros((), jnp.float32)
  stats = LossStats(
      clip_frac=_masked_mean(clipped.astype(jnp.float32), mask),
      dual_clip_frac=_masked_mean(dual.astype(jnp.float32), mask),
      behav_weight_mean=jnp.ones((), jnp.float32),
      behav_weight_capped_frac=zero,
      approx_kl=jax.lax.stop_gradient(_masked_mean((r - 1.0) - log_r, mask)),
      behav_prox_kl=zero,
      num_tokens=jnp.sum(mask))
  return _masked_mean(per_token, mask), stats


def group_normalized_advantages(rewards, group_ids=None, *, num_groups: int | None = None,
                                eps: float = 1e-6, scale: bool = True):
  r"""GRPO-style advantages without a critic (Shao et al. 2024, arXiv:2402.03300; used by AReaL's
  runs, arXiv:2505.24298 App. B): each answer's reward relative to the other answers to the
  same prompt,

      A_i = (r_i - mean_{j in g(i)} r_j) / (std_{j in g(i)} r_j + eps)

  (population std; ``scale=False`` keeps only the mean-centring, as in Dr. GRPO). A group whose
  answers all scored the same gets advantage 0: it carries no learning signal.

  Args:
    rewards: ``[P, n]`` (P prompts, n answers each: groups are the rows), or ``[N]`` with
      ``group_ids``.
    group_ids: ``int [N]`` in ``[0, num_groups)``; only with 1-D rewards.
    num_groups: the number of groups (needed under jit; otherwise ``max(group_ids) + 1``).

  Returns:
    float32 advantages with the shape of ``rewards``.
  """
  r = jnp.asarray(rewards, jnp.float32)
  if not float(eps) >= 0:
    raise ValueError(f"eps={eps} must be >= 0 (it keeps the division finite).")
  if group_ids is None:
    if r.ndim != 2:
      raise ValueError(f"rewards has shape {r.shape}: pass [prompts, answers_per_prompt], or a "
                       "1-D array together with group_ids.")
    mean = jnp.mean(r, axis=1, keepdims=True)
    std = jnp.std(r, axis=1, keepdims=True)
    centred = r - mean
    return centred / (std + eps) if scale else centred
  g = jnp.asarray(group_ids)
  if r.ndim != 1 or g.shape != r.shape:
    raise ValueError(f"rewards {r.shape} and group_ids {g.shape} must both be 1-D and of the "
                     "same length (one group id per answer).")
  if not jnp.issubdtype(g.dtype, jnp.integer):
    raise ValueError(f"group_ids must be integers; got dtype {g.dtype}.")
  if num_groups is None:
    if isinstance(g, jax.core.Tracer):
      raise ValueError("under jit, pass num_groups (the number of distinct group ids).")
    num_groups = int(jnp.max(g)) + 1 if g.size else 0
  ones = jnp.ones_like(r)
  count = jax.ops.segment_sum(ones, g, num_segments=num_groups)
  mean = jax.ops.segment_sum(r, g, num_segments=num_groups) / jnp.maximum(count, 1.0)
  centred = r - mean[g]
  var = jax.ops.segment_sum(centred ** 2, g, num_segments=num_groups) / jnp.maximum(count, 1.0)
  return centred / (jnp.sqrt(var)[g] + eps) if scale else centred
