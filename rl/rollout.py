r"""AReaL's interruptible rollout worker (Fu et al., arXiv:2505.24298 §3.1): slot-based
continuous batching on :mod:`infer.decode`'s KV cache, per-token behaviour log-probs and policy
versions, and ``update_weights`` that interrupts generation and recomputes the KV caches.

**Slots.** The engine holds ``num_slots`` sequences in one plain KV cache ``[S, cache_len, Hkv,
D]`` (``cache_len = bucket(max_prompt_len + max_new_tokens)``). One jitted :func:`_decode_step`
samples a token for every slot and runs the model on it; a sequence that stops (stop token or
``max_new_tokens``) is returned at once and its slot is free for the next prompt, which is
prefilled into that row (:func:`infer.decode._prefill` on a batch-1 row, then written back).
``stats["prefill_calls"]`` counts the prefill calls (a cost of their own in a simulated clock). A
reused row needs no clearing: attention reads cache slots ``<= position`` only, and the new
prompt overwrites those first.

**Log-probs and versions.** Token ``k`` is drawn from ``softmax(logits / T)`` (``T = 0``: argmax)
restricted to ids ``< vocab_limit``, and the engine records ``log pi_behav(a_k) =
log_softmax(logits / T)[a_k]`` (``T = 0`` scores with ``T = 1``) and the policy version that
drew it. :func:`token_logprobs` is the same formula for the trainer, so at ``eta = 0`` the
recomputed proximal log-probs equal the behaviour ones up to float rounding.

**Randomness.** Token ``k`` of trajectory ``uid`` uses the key ``fold_in(fold_in(key(seed), uid),
k)``: what a trajectory samples depends neither on its slot nor on what else is running, so a
synchronous loop and an asynchronous schedule draw the same tokens from the same logits.

**Interruption** (``update_weights(params, version)``, AReaL's ``update_weights`` request): the
in-flight sequences keep their tokens, log-probs and versions; their KV is thrown away and
recomputed with the new weights by prefilling prompt + partial output, and decoding continues
from the new weights' logits. One trajectory can therefore mix versions (the paper's Prop. 1).

**Shared prompts.** The ``n`` samples of a prompt share its prefill: the prompt's row cache and
last logits are computed once per (prompt, version) and copied into each sample's slot (prefix
caching). Hydragen's shared-prefix attention (:mod:`infer.decode`) is *not* used: it needs each
sharing group in contiguous rows with group sizes fixed at compile time, while continuous
batching starts and frees samples one slot at a time; the copy saves the prefill work but not
the decode-time KV reads.

**Placement.** Params and cache live on ``devices`` (a rollout mesh, replicated: the models
here are small; the trainer's mesh is separate and weights arrive by ``jax.device_put``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infer import decode
from models import transformer


def scaled_logits(logits, temperature, vocab_limit):
  """``logits / T`` (``T = 0`` scores with ``T = 1``), ids ``>= vocab_limit`` at -inf."""
  t = jnp.where(temperature > 0, temperature, 1.0)
  logits = logits / t
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)


def token_logprobs(logits, targets, temperature, vocab_limit):
  """``log_softmax(logits / T)[target]`` per position: the sampler's behaviour log-prob."""
  logp = jax.nn.log_softmax(scaled_logits(logits, temperature, vocab_limit), axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decode_step(graphdef, params, cache, logits, positions, uids, steps, seed, temperature,
                 vocab_limit):
  """Samples token ``steps[i]`` of every slot, scores it, runs the model on it at
  ``positions[i]``; ``(tokens, behaviour logp, next logits, cache)``."""
  scaled = scaled_logits(logits, temperature, vocab_limit)
  base = jax.random.key(seed)
  keys = jax.vmap(lambda u, s: jax.random.fold_in(jax.random.fold_in(base, u), s))(uids, steps)
  drawn = jax.vmap(jax.random.categorical)(keys, scaled)
  tok = jnp.where(temperature > 0, drawn, jnp.argmax(scaled, axis=-1)).astype(jnp.int32)
  logp = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tok[:, None], axis=-1)[:, 0]
  next_logits, cache = transformer.apply(graphdef, params, tok[:, None], positions[:, None],
                                         None, cache)
  return tok, logp, next_logits[:, 0], cache


@jax.jit
def _write_row(cache, logits, row_cache, row_logits, slot):
  """Puts a batch-1 row cache and its last logits into slot ``slot``."""
  cache = jax.tree.map(
      lambda c, r: jax.lax.dynamic_update_slice_in_dim(c, r.astype(c.dtype), slot, axis=0),
      cache, row_cache)
  logits = jax.lax.dynamic_update_slice_in_dim(logits, row_logits, slot, axis=0)
  return cache, logits


@dataclasses.dataclass
class Trajectory:
  """One generated completion.

  tokens / logps / versions: per generated token, the id, ``log pi_behav`` and the policy
  version that sampled it. interruptions: weight updates it lived through.
  finish_reason: "stop" (a stop token, kept as the last token) or "length".
  """
  uid: int
  prompt: list[int]
  tokens: list[int] = dataclasses.field(default_factory=list)
  logps: list[float] = dataclasses.field(default_factory=list)
  versions: list[int] = dataclasses.field(default_factory=list)
  interruptions: int = 0
  finish_reason: str | None = None

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Trajectory":
    return cls(**d)


class RolloutEngine:
  """Continuous batching with interruptible weight updates; see the module docstring.

  Args:
    cfg, graphdef, params: the policy (:func:`models.transformer.init` or an export).
    num_slots: sequences decoded together.
    max_prompt_len, max_new_tokens: longest prompt accepted and generation cap.
    stop_tokens: ids that end a completion (kept as its last token).
    temperature: sampling temperature (1.0: the policy itself; 0: greedy).
    seed: base of every trajectory's key (see the module docstring).
    vocab_limit: only ids below it are sampled (default the model's vocab_size).
    devices: the rollout mesh's devices (default: the first local device).
    version: the policy version of ``params``.
  """

  def __init__(self, cfg: transformer.ModelConfig, graphdef, params, *, num_slots: int,
               max_prompt_len: int, max_new_tokens: int, stop_tokens: Sequence[int] = (),
               temperature: float = 1.0, seed: int = 0, vocab_limit: int | None = None,
               devices: Sequence[jax.Device] | None = None, version: int = 0):
    if num_slots < 1:
      raise ValueError(f"num_slots={num_slots} must be >= 1.")
    if max_prompt_len < 1 or max_new_tokens < 1:
      raise ValueError(f"max_prompt_len={max_prompt_len} and max_new_tokens={max_new_tokens} "
                       "must both be >= 1.")
    if not temperature >= 0:
      raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy).")
    self.cfg, self.graphdef = cfg, graphdef
    self.num_slots, self.max_prompt_len = int(num_slots), int(max_prompt_len)
    self.max_new_tokens = int(max_new_tokens)
    self.stop_tokens = frozenset(int(t) for t in stop_tokens)
    self.temperature, self.seed = float(temperature), int(seed)
    self.vocab_limit = cfg.vocab_size if vocab_limit is None else int(vocab_limit)
    devices = list(devices) if devices is not None else jax.devices()[:1]
    self.mesh = Mesh(np.array(devices), ("rollout",))
    self.sharding = NamedSharding(self.mesh, PartitionSpec())
    self.cache_len = decode.bucket(self.max_prompt_len + self.max_new_tokens)
    self.version = int(version)
    self.params = jax.device_put(params, self.sharding)
    shape = (self.num_slots, self.cache_len, cfg.n_kv_heads, cfg.head_dim)
    zeros = lambda s: jnp.zeros(s, jnp.dtype(cfg.dtype), device=self.sharding)
    self._cache = [{"k": zeros(shape), "v": zeros(shape)} for _ in range(cfg.n_layers)]
    self._row_template = [{"k": zeros((1,) + shape[1:]), "v": zeros((1,) + shape[1:])}
                          for _ in range(cfg.n_layers)]
    self._logits = jnp.zeros((self.num_slots, cfg.vocab_size), jnp.float32,
                             device=self.sharding)
    self._slots: list[Trajectory | None] = [None] * self.num_slots
    self._prompt_kv: dict[tuple, tuple] = {}  # (prompt, version) -> (logits, row cache)
    self.stats = {"decode_steps": 0, "prefill_calls": 0, "prefill_tokens": 0,
                  "generated_tokens": 0, "interruptions": 0, "shared_prefills": 0}

  # -- slots -------------------------------------------------------------------------------------

  def free_slots(self) -> int:
    return sum(t is None for t in self._slots)

  def in_flight(self) -> list[Trajectory]:
    """The unfinished trajectories, by slot."""
    return [t for t in self._slots if t is not None]

  def slot_of(self) -> dict[int, int]:
    """uid -> slot of every unfinished trajectory."""
    return {t.uid: i for i, t in enumerate(self._slots) if t is not None}

  def _prefill(self, tokens: list[int]):
    """``(last logits [1, V], row cache)`` of ``tokens`` under the current params."""
    length = decode.bucket(len(tokens))
    padded = np.zeros((1, length), np.int32)
    padded[0, :len(tokens)] = tokens
    positions = np.arange(length, dtype=np.int32)[None]
    logits, row = decode._prefill(self.graphdef, self.params, padded, positions,  # pylint: disable=protected-access
                                  self._row_template, np.array([len(tokens) - 1], np.int32))
    self.stats["prefill_calls"] += 1
    self.stats["prefill_tokens"] += len(tokens)
    return logits, row

  def add(self, uid: int, prompt: Sequence[int], partial: Trajectory | None = None,
          slot: int | None = None) -> int:
    """Starts trajectory ``uid`` in a free slot (the first one, or ``slot``), or resumes
    ``partial`` (e.g. from a checkpoint: its tokens are re-prefilled); returns the slot."""
    prompt = [int(t) for t in prompt]
    if not prompt:
      raise ValueError(f"trajectory {uid}: the prompt is empty; start it with at least a BOS.")
    if len(prompt) > self.max_prompt_len:
      raise ValueError(f"trajectory {uid}: prompt of {len(prompt)} tokens exceeds "
                       f"max_prompt_len={self.max_prompt_len}; raise it or shorten the prompt.")
    bad = [t for t in prompt if not 0 <= t < self.cfg.vocab_size]
    if bad:
      raise ValueError(f"trajectory {uid}: token ids {bad[:5]} are outside the model's "
                       f"vocabulary [0, {self.cfg.vocab_size}).")
    if None not in self._slots:
      raise RuntimeError("no free slot: call add() only while free_slots() > 0.")
    slot = self._slots.index(None) if slot is None else int(slot)
    if self._slots[slot] is not None:
      raise RuntimeError(f"slot {slot} is busy with trajectory {self._slots[slot].uid}.")
    traj = partial if partial is not None else Trajectory(uid, prompt)
    if traj.tokens:
      logits, row = self._prefill(traj.prompt + traj.tokens)
    else:
      key = (tuple(prompt), self.version)
      if key in self._prompt_kv:
        self.stats["shared_prefills"] += 1
      else:
        if len(self._prompt_kv) >= self.num_slots:  # oldest out: samples of a prompt come together
          self._prompt_kv.pop(next(iter(self._prompt_kv)))
        self._prompt_kv[key] = self._prefill(prompt)
      logits, row = self._prompt_kv[key]
    self._cache, self._logits = _write_row(self._cache, self._logits, row, logits, slot)
    self._slots[slot] = traj
    return slot

  # -- decoding ----------------------------------------------------------------------------------

  def step(self) -> list[Trajectory]:
    """One token for every running trajectory; returns those that finished (slots freed)."""
    active = [i for i, t in enumerate(self._slots) if t is not None]
    if not active:
      return []
    positions = np.zeros(self.num_slots, np.int32)
    uids = np.zeros(self.num_slots, np.int32)
    steps = np.zeros(self.num_slots, np.int32)
    for i in active:
      t = self._slots[i]
      positions[i] = len(t.prompt) + len(t.tokens)
      uids[i], steps[i] = t.uid, len(t.tokens)
    tok, logp, self._logits, self._cache = _decode_step(
        self.graphdef, self.params, self._cache, self._logits, positions, uids, steps,
        np.uint32(self.seed), np.float32(self.temperature), np.int32(self.vocab_limit))
    tok, logp = np.asarray(tok), np.asarray(logp)
    self.stats["decode_steps"] += 1
    finished = []
    for i in active:
      t = self._slots[i]
      t.tokens.append(int(tok[i]))
      t.logps.append(float(logp[i]))
      t.versions.append(self.version)
      self.stats["generated_tokens"] += 1
      if int(tok[i]) in self.stop_tokens or len(t.tokens) >= self.max_new_tokens:
        t.finish_reason = "stop" if int(tok[i]) in self.stop_tokens else "length"
        finished.append(t)
        self._slots[i] = None
    return finished

  def update_weights(self, params, version: int) -> None:
    """Loads ``params`` as ``version`` and interrupts every running trajectory: its KV is
    recomputed with the new weights from prompt + partial output, all slots in one prefill
    call; decoding then goes on."""
    if int(version) < self.version:
      raise ValueError(f"update_weights(version={version}) would go back from version "
                       f"{self.version}; versions only increase.")
    self.params = jax.device_put(params, self.sharding)
    self.version = int(version)
    self._prompt_kv.clear()
    for slot in self._reprefill():
      self._slots[slot].interruptions += 1
      self.stats["interruptions"] += 1

  def restore(self, in_flight: Sequence[tuple[Trajectory, int]]) -> None:
    """Puts checkpointed ``(trajectory, slot)`` pairs back in their slots and recomputes their
    KV in one call, as :meth:`update_weights` did when they were saved (bit-identical)."""
    for traj, slot in in_flight:
      if self._slots[slot] is not None:
        raise RuntimeError(f"slot {slot} is busy with trajectory {self._slots[slot].uid}.")
      self._slots[slot] = traj
    self._reprefill()

  def _reprefill(self) -> list[int]:
    """Recomputes the KV and next logits of every running slot (prompt + tokens so far) with
    the current params, all slots in one prefill call; returns those slots."""
    running = {slot: t.prompt + t.tokens for slot, t in enumerate(self._slots) if t is not None}
    if not running:
      return []
    # Every row is recomputed; free rows get a 1-token dummy (a reused row is written whole by
    # add()). Positions past a row's length hold padding KV that decoding overwrites before
    # attention can reach it (it reads positions <= the current one only).
    length = decode.bucket(max(map(len, running.values())))
    tokens = np.zeros((self.num_slots, length), np.int32)
    last = np.zeros(self.num_slots, np.int32)
    for slot, seq in running.items():
      tokens[slot, :len(seq)] = seq
      last[slot] = len(seq) - 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape)
    logits, self._cache = decode._prefill(self.graphdef, self.params, tokens, positions,  # pylint: disable=protected-access
                                          self._cache, last)
    self._logits = logits.astype(self._logits.dtype)
    self.stats["prefill_calls"] += 1
    self.stats["prefill_tokens"] += sum(map(len, running.values()))
    return list(running)

  def generate(self, requests: Sequence[tuple[int, Sequence[int]]]) -> list[Trajectory]:
    """Runs ``(uid, prompt)`` requests to completion with continuous batching (a freed slot
    takes the next request); the trajectories in request order."""
    pending, done = list(requests), {}
    while pending or self.in_flight():
      while pending and self.free_slots():
        uid, prompt = pending.pop(0)
        self.add(uid, prompt)
      for t in self.step():
        done[t.uid] = t
    return [done[uid] for uid, _ in requests]
