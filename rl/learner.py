r"""The PPO trainer side of AReaL (Fu et al., arXiv:2505.24298 §3.1, §4.2, App. B): one call
of :meth:`Learner.train` turns a batch of rewarded trajectories into the next policy version.

Per batch (AReaL's ``PPOTrainer.train`` order):

1. group-normalized advantages over the ``n`` answers of each prompt (GRPO, no critic; a
   group split across batches by staleness is normalized over the part in this batch);
2. the batch is cut into ``k`` minibatches (in the controller's oldest-first order), each
   packed by Algorithm 1 (:mod:`rl.packing`) into a ``[rows, token_budget]`` block: the rows
   Algorithm 1 needs, rounded up to a multiple of the training devices, at most
   ``micro_batches`` (each row count compiles once; a fixed ``micro_batches`` rows spent the
   train step's compute on empty rows); sequences are ``prompt + completion`` and position ``t`` predicts
   token ``t + 1``, with the loss mask on the completion's tokens only;
3. ``log pi_prox`` is recomputed for all ``k`` minibatches with the parameters before any
   update (AReaL's ``compute_logp``);
4. ``k`` Adam steps, each on one minibatch, with the decoupled loss of Eq. 5
   (:func:`rl.losses.decoupled_ppo_loss`) or, for the ablation, naive PPO anchored at
   ``pi_behav`` (:func:`rl.losses.ppo_loss`).

Params and optimizer state live on the training mesh (replicated; packed rows are split
over its devices, data parallel); :attr:`Learner.params` is what gets published.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models import transformer
from rl import losses, packing, rollout
from rl.controller import Sample

FIELDS = ("tokens", "targets", "mask", "behav_logp", "advantages")


def sequence_fields(samples: Sequence[Sample], group_size: int) -> dict[str, list[np.ndarray]]:
  """Per-token arrays of every sample: ``tokens`` (prompt + completion), ``targets`` (the next
  token), ``mask`` (1 where the target is a generated token), ``behav_logp`` and
  ``advantages`` (the sample's group-normalized reward on every token)."""
  groups = [s.ticket.uid // group_size for s in samples]
  index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
  adv = np.asarray(losses.group_normalized_advantages(
      np.array([s.reward for s in samples], np.float32),
      np.array([index[g] for g in groups], np.int32), num_groups=len(index)))
  out = {name: [] for name in FIELDS}
  for s, a in zip(samples, adv):
    traj = s.trajectory
    prompt_len, n = len(traj.prompt), len(traj.tokens)
    tokens = np.array(traj.prompt + traj.tokens, np.int32)
    mask = np.zeros(len(tokens), np.float32)
    mask[prompt_len - 1:prompt_len - 1 + n] = 1.0
    behav = np.zeros(len(tokens), np.float32)
    behav[prompt_len - 1:prompt_len - 1 + n] = traj.logps
    out["tokens"].append(tokens)
    out["targets"].append(np.append(tokens[1:], 0).astype(np.int32))
    out["mask"].append(mask)
    out["behav_logp"].append(behav)
    out["advantages"].append(np.full(len(tokens), a, np.float32))
  return out


def _logprobs(graphdef, params, batch, temperature, vocab_limit):
  logits = transformer.apply(graphdef, params, batch["tokens"], batch["positions"],
                             batch["segment_ids"])
  return rollout.token_logprobs(logits, batch["targets"], temperature, vocab_limit)


class Learner:
  """Params, optimizer state and the jitted PPO step on the training devices.

  Args:
    graphdef, params: the policy; tx: the optax optimizer.
    devices: the training mesh's devices.
    loss: "decoupled" | "naive"; clip_eps, behav_weight_cap (None: uncapped): the loss's.
    temperature, vocab_limit: how the rollout sampled (log-probs must match it).
    minibatches, micro_batches, token_budget, group_size: see the module docstring.
  """

  def __init__(self, graphdef, params, tx, *, devices, loss: str = "decoupled",
               clip_eps: float = 0.2, behav_weight_cap: float | None = 5.0,
               temperature: float = 1.0, vocab_limit: int, minibatches: int = 1,
               micro_batches: int = 1, token_budget: int = 128, group_size: int = 1,
               opt_state=None):
    if loss not in ("decoupled", "naive"):
      raise ValueError(f"loss={loss!r}: use 'decoupled' (AReaL Eq. 5) or 'naive' (PPO "
                       "anchored at the behaviour policy).")
    devices = list(devices)
    if micro_batches % len(devices):
      raise ValueError(f"micro_batches={micro_batches} must be a multiple of the "
                       f"{len(devices)} training devices (the packed rows are split over them).")
    if minibatches < 1:
      raise ValueError(f"minibatches={minibatches} must be >= 1.")
    self.graphdef, self.tx = graphdef, tx
    self.mesh = Mesh(np.array(devices), ("data",))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.rows = NamedSharding(self.mesh, PartitionSpec("data"))
    self.params = jax.device_put(params, self.replicated)
    self.opt_state = (jax.device_put(opt_state, self.replicated) if opt_state is not None
                      else jax.jit(tx.init, out_shardings=self.replicated)(self.params))
    self.minibatches, self.micro_batches = int(minibatches), int(micro_batches)
    self.token_budget, self.group_size = int(token_budget), int(group_size)
    self.temperature, self.vocab_limit = float(temperature), int(vocab_limit)
    cap = behav_weight_cap if behav_weight_cap and behav_weight_cap > 0 else None

    def loss_fn(params, batch, prox):
      logp = _logprobs(graphdef, params, batch, self.temperature, self.vocab_limit)
      if loss == "decoupled":
        return losses.decoupled_ppo_loss(logp, prox, batch["behav_logp"], batch["advantages"],
                                         batch["mask"], clip_eps=clip_eps, behav_weight_cap=cap)
      return losses.ppo_loss(logp, batch["behav_logp"], batch["advantages"], batch["mask"],
                             clip_eps=clip_eps)

    def update(params, opt_state, batch, prox):
      (value, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, prox)
      updates, opt_state = tx.update(grads, opt_state, params)
      metrics = {"loss": value, "grad_norm": optax.tree.norm(grads),
                 "clip_frac": stats.clip_frac, "behav_weight_mean": stats.behav_weight_mean,
                 "approx_kl": stats.approx_kl}
      return optax.apply_updates(params, updates), opt_state, metrics

    self._prox = jax.jit(functools.partial(_logprobs, graphdef, temperature=self.temperature,
                                           vocab_limit=self.vocab_limit))
    self._update = jax.jit(update)

  def pack(self, samples: Sequence[Sample]) -> list[dict]:
    """The batch as ``k`` packed minibatches on the training mesh."""
    if len(samples) < self.minibatches:
      raise ValueError(f"{len(samples)} samples cannot make {self.minibatches} minibatches.")
    fields = sequence_fields(samples, self.group_size)
    bounds = np.linspace(0, len(samples), self.minibatches + 1).round().astype(int)
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      p = packing.pack({k: v[lo:hi] for k, v in fields.items()}, self.token_budget,
                       row_multiple=self.mesh.size)
      if len(p.segment_ids) > self.micro_batches:
        raise ValueError(f"a minibatch needs {len(p.segment_ids)} micro-batches of "
                         f"{self.token_budget} tokens but micro_batches={self.micro_batches}: "
                         "raise rl.micro_batches or rl.token_budget.")
      batch = {**p.fields, "segment_ids": p.segment_ids, "positions": p.positions}
      out.append(jax.device_put(batch, self.rows))
    return out

  def train(self, samples: Sequence[Sample]) -> dict:
    """k PPO steps on ``samples``; returns metrics averaged over the minibatches plus
    ``kl_behav_prox``, the k3 estimate of KL(pi_behav || pi_prox) over the generated tokens."""
    batches = self.pack(samples)
    prox = [self._prox(self.params, b) for b in batches]  # before any update (pi_prox)
    kl_sum = tokens = 0.0
    for b, p in zip(batches, prox):
      mask = np.asarray(b["mask"])
      log_w = np.where(mask > 0, np.asarray(p) - np.asarray(b["behav_logp"]), 0.0)
      kl_sum += float(np.sum(mask * (np.expm1(log_w) - log_w)))
      tokens += float(mask.sum())
    metrics = []
    for b, p in zip(batches, prox):
      self.params, self.opt_state, m = self._update(self.params, self.opt_state, b, p)
      metrics.append(jax.device_get(m))
    out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    out["kl_behav_prox"] = kl_sum / max(tokens, 1.0)
    out["tokens"] = int(tokens)
    return out
