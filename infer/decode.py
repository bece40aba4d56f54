"""Batched generation over a KV cache, with Hydragen shared-prefix attention.

**Static shapes.** Each request batch is padded so that nothing recompiles per request:

* batch slots: the number of prompts is rounded up to a power of two (and to a multiple of
  the mesh's data-parallel size); empty slots are marked finished from the start;
* prompt lengths (after the shared prefix) and the shared prefix length are rounded up to
  powers of two ``>= 16`` (:func:`bucket`); prompts are right-padded, and padded positions
  are never attended by real tokens (causal mask, cache slot ``<=`` position);
* max new tokens is rounded up the same way for the output buffer; the cache length is
  ``prompt bucket + new-token bucket`` (a sum of two buckets, not rounded again: the plain
  path's attention reads the whole cache every step); the actual ``max_new_tokens`` and the
  sampling parameters are runtime arrays.

Two compiled functions per shape bucket do all the work: :func:`_prefill` (one forward over
the padded prompts, returns each row's last-token logits and the filled cache) and
:func:`_decode` (a ``lax.while_loop`` of one-token steps that samples, writes into the
output buffer and stops when every row hit a stop token or ``max_new_tokens``).

**Hydragen** (Juravsky et al. 2024, arXiv 2402.05099). With ``hydragen=True`` the KV of
shared token spans is computed once and kept out of the per-sequence caches:

* level 0, the shared prefix (e.g. a system prompt): prefilled with batch 1, its KV is a
  ``PrefixLevel`` with one group holding every row;
* level 1, each prompt when ``num_samples > 1``: prefilled once per prompt (attending to
  level 0), then shared by that prompt's samples (groups of ``num_samples`` rows);
* the suffix cache of each row holds the rest: the prompt (when ``num_samples == 1``) and
  the generated tokens.

Each attention call merges the levels' and the suffix's partial attentions exactly
(:mod:`models.attention`), so greedy tokens equal the plain
path's. Rows are ordered prompt-major (sample ``j`` of prompt ``p`` is row ``p * n + j``),
so every sharing group is contiguous, as the kernels require.

**Parallelism.** With a ``mesh``, params are sharded by their logical axes (the training
rules of :mod:`core.sharding`: heads over ``tensor``) and caches and the batch over
``(data, fsdp)``; the model's activation constraints apply inside the jitted functions. On a
GPU/TPU the low-bit matmul and Hydragen attention run their Pallas kernels per shard
(:mod:`kernels_pallas.sharded`: column-/row-parallel weights, batch and heads split).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from infer import sampling as sampling_lib
from kernels_pallas import lowbit_matmul
from kernels_pallas.prefix_attention import PrefixLevel
from core import sharding
from models import transformer

MIN_BUCKET = 16
MAX_STOP_TOKENS = 8


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
  """Smallest power of two ``>= max(n, minimum)``."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to pick tokens; ``temperature=0`` is greedy (see :mod:`infer.sampling`)."""
  max_new_tokens: int = 64
  temperature: float = 0.0
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1: off
  num_samples: int = 1  # completions per prompt
  seed: int | Sequence[int] = 0  # one seed for every prompt, or one per prompt
  stop_tokens: tuple[int, ...] = ()

  def validate(self, num_prompts: int):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
    if self.temperature < 0 or not math.isfinite(self.temperature):
      raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}.")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}.")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}.")
    if self.num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {self.num_samples}.")
    if len(self.stop_tokens) > MAX_STOP_TOKENS:
      raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens are supported, got "
                       f"{len(self.stop_tokens)}.")
    if not isinstance(self.seed, int) and len(self.seed) != num_prompts:
      raise ValueError(f"seed must be one int or one per prompt ({num_prompts}), got "
                       f"{len(self.seed)} seeds.")


@dataclasses.dataclass
class Generation:
  """Result of :meth:`Decoder.generate`.

  ``tokens[p][j]``: generated ids of sample ``j`` of prompt ``p``, up to and including a
  stop token; ``token_array``: the same as ``int32[P, n, max_new_tokens]`` right-padded
  with the pad id; ``finish_reasons[p][j]``: "stop" or "length".
  """
  tokens: list[list[list[int]]]
  token_array: np.ndarray
  finish_reasons: list[list[str]]
  prefill_tokens: int  # prompt tokens run through the model (shared spans counted once)
  prefill_s: float
  decode_tokens: int  # generated tokens, all samples
  decode_s: float

  @property
  def prefill_tokens_per_s(self) -> float:
    return self.prefill_tokens / max(self.prefill_s, 1e-9)

  @property
  def decode_tokens_per_s(self) -> float:
    return self.decode_tokens / max(self.decode_s, 1e-9)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, params, tokens, positions, cache, last_index):
  """Forward over padded prompts; ``(logits at last_index [B, V], cache)``."""
  logits, cache = transformer.apply(graphdef, params, tokens, positions, None, cache)
  return logits[jnp.arange(tokens.shape[0]), last_index], cache


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decode(graphdef, params, cache, last_logits, positions, done, out, max_new, seeds,
            sample_index, temperature, top_k, top_p, stop_tokens, pad_id, vocab_limit):
  """Samples up to ``max_new`` tokens per row into ``out [B, T]``; ``(out, steps)``.

  Only ids ``< vocab_limit`` are ever sampled (a model's vocab is often padded past its
  tokenizer's).

  Step ``t`` samples token ``t`` from the logits of the previous step (the prefill's for
  ``t = 0``), then runs the model on it for step ``t + 1``. The sampler is traced once (it
  dominates compile time on CPU); the price is one unused forward after the last token.
  """
  keys = sampling_lib.row_keys(seeds, sample_index)

  def cond(carry):
    step, _, _, _, done, _ = carry
    return (step < max_new) & ~jnp.all(done)

  def body(carry):
    step, cache, logits, pos, done, out = carry
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    tok = sampling_lib.sample(logits, keys, step, temperature, top_k, top_p)
    tok = jnp.where(done, pad_id, tok)
    out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, step))
    stopped = jnp.any(tok[:, None] == stop_tokens[None, :], axis=-1)
    new_done = done | stopped | (step + 1 >= max_new)
    logits, cache = transformer.apply(graphdef, params, tok[:, None], pos[:, None], None,
                                      cache)
    # Finished rows stay put (rewriting their own slot), so they never run off the cache.
    return step + 1, cache, logits[:, 0], jnp.where(done, pos, pos + 1), new_done, out

  carry = (jnp.int32(0), cache, last_logits, positions, done, out)
  step, _, _, _, _, out = jax.lax.while_loop(cond, body, carry)
  return out, step


@jax.jit
def _copy_prefix(cache, prefix_cache):
  """Writes the batch-1 ``prefix_cache`` into slots ``[0, P)`` of every row of ``cache``."""
  return [{name: c[name].at[:, :p[name].shape[1]].set(p[name][0]) for name in ("k", "v")}
          for c, p in zip(cache, prefix_cache)]


class Decoder:
  """Generates from a model's params; see the module docstring.

  Args:
    cfg: the model's :class:`models.transformer.ModelConfig`.
    graphdef, params: from :func:`models.transformer.init` or an export (params may hold
      ``core.qtensor.QuantizedWeight`` leaves in place of linear kernels).
    max_len: longest sequence (prefix + prompt + new tokens) a request may need; longer
      requests raise instead of being truncated.
    pad_id: id written after a row stops.
    vocab_limit: only ids below it are generated (default: the model's vocab_size); set it
      to the tokenizer's vocab size when the model's vocab is padded.
    prefill_chunk: most prompt tokens per prefill call (a power of two).
    mesh, rules: optional device mesh and logical axis rules (default
      ``core.sharding.DEFAULT_RULES``) for tensor-parallel heads, data-parallel batch.
  """

  def __init__(self, cfg: transformer.ModelConfig, graphdef, params, *, max_len: int = 4096,
               pad_id: int = 0, vocab_limit: int | None = None, prefill_chunk: int = 2048,
               mesh=None, rules=None):
    self.cfg, self.graphdef, self.max_len, self.pad_id = cfg, graphdef, int(max_len), pad_id
    self.vocab_limit = cfg.vocab_size if vocab_limit is None else int(vocab_limit)
    if prefill_chunk < 1 or prefill_chunk & (prefill_chunk - 1):
      raise ValueError(f"prefill_chunk={prefill_chunk} must be a power of two.")
    self.prefill_chunk = prefill_chunk
    if not 0 < self.vocab_limit <= cfg.vocab_size:
      raise ValueError(f"vocab_limit={vocab_limit} must be in [1, vocab_size="
                       f"{cfg.vocab_size}].")
    self.mesh = mesh
    self.cache_dtype = jnp.dtype(cfg.dtype)
    if mesh is not None:
      self.rules = tuple(rules if rules is not None else sharding.DEFAULT_RULES)
      params = jax.device_put(params, sharding.tree_shardings(
          transformer.logical_axes(cfg), params, mesh, self.rules))
    else:
      self.rules = ()
      # Committed to one device, like restored params, so both hit the same compiled code.
      params = jax.device_put(params, jax.devices()[0])
    # Low-bit weights in the layout this backend's kernel reads, once (not per call).
    self.params = lowbit_matmul.prepare_params(params)

  # ---------------------------------------------------------------------------------------
  # Shapes and placement.

  def _data_parallel(self) -> int:
    if self.mesh is None:
      return 1
    spec = sharding.logical_to_spec(("batch",), (1 << 30,), dict(self.rules), self.mesh)
    axes = spec[0] if spec[0] is not None else ()
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(self.mesh.shape[a] for a in axes)

  def _zeros(self, shape, dtype, logical_axes):
    if self.mesh is None:
      return jnp.zeros(shape, dtype)
    spec = sharding.logical_to_spec(logical_axes, shape, dict(self.rules), self.mesh)
    return jnp.zeros(shape, dtype, device=NamedSharding(self.mesh, spec))

  def _suffix_cache(self, batch, length, levels, offset):
    shape = (batch, length, self.cfg.n_kv_heads, self.cfg.head_dim)
    axes = ("batch", None, "act_kv", None)
    cache = []
    for layer in range(self.cfg.n_layers):
      entry = {"k": self._zeros(shape, self.cache_dtype, axes),
               "v": self._zeros(shape, self.cache_dtype, axes)}
      if levels is not None:
        entry.update(levels=tuple(lv[layer] for lv in levels), offset=jnp.asarray(offset))
      cache.append(entry)
    return cache

  def _run(self, fn, *args, **kwargs):
    if self.mesh is None:
      return fn(*args, **kwargs)
    with sharding.axis_rules(self.rules, self.mesh):
      return fn(*args, **kwargs)

  def _prefill_rows(self, rows: list[list[int]], batch: int, cache, start):
    """Prefills right-padded ``rows`` (``start``: absolute position of their first token).

    Runs ``prefill_chunk`` tokens per call (the attention logits of a call are
    ``batch x heads x chunk x cache length``); every chunk has the same shape.
    """
    length = bucket(max(len(r) for r in rows))
    tokens = np.full((batch, length), self.pad_id, np.int32)
    for i, r in enumerate(rows):
      tokens[i, :len(r)] = r
    last_index = np.array([len(r) for r in rows] + [1] * (batch - len(rows)), np.int32) - 1
    positions = np.asarray(start, np.int32).reshape(-1, 1) + np.arange(length, dtype=np.int32)
    positions = np.broadcast_to(positions, (batch, length))
    chunk = min(length, self.prefill_chunk)  # powers of two: chunk divides length
    last = None
    for c0 in range(0, length, chunk):
      logits, cache = self._run(_prefill, self.graphdef, self.params, tokens[:, c0:c0 + chunk],
                                positions[:, c0:c0 + chunk], cache,
                                np.clip(last_index - c0, 0, chunk - 1))
      in_chunk = (last_index >= c0) & (last_index < c0 + chunk)
      last = logits if last is None else jnp.where(in_chunk[:, None], logits, last)
    return last, cache

  # ---------------------------------------------------------------------------------------
  # Generation.

  def check_request(self, prompts, prefix, max_new_tokens):
    if not prompts:
      raise ValueError("prompts is empty: pass at least one prompt.")
    bad = [t for t in prefix if not 0 <= int(t) < self.cfg.vocab_size]
    if bad:
      raise ValueError(f"the shared prefix has token ids {bad[:5]} outside the model's "
                       f"vocabulary [0, {self.cfg.vocab_size}).")
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty: every prompt needs at least one token after "
                         f"the shared prefix (e.g. a BOS token).")
      bad = [t for t in p if not 0 <= int(t) < self.cfg.vocab_size]
      if bad:
        raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the model's vocabulary "
                         f"[0, {self.cfg.vocab_size}).")
      total = len(prefix) + len(p) + max_new_tokens
      if total > self.max_len:
        raise ValueError(
            f"prompt {i} needs {total} positions (shared prefix {len(prefix)} + prompt "
            f"{len(p)} + max_new_tokens {max_new_tokens}) but max_len is {self.max_len}; "
            f"shorten the prompt, lower max_new_tokens or raise max_len. Requests are never "
            f"truncated.")

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(),
               *, prefix: Sequence[int] | None = None, hydragen: bool = True) -> Generation:
    """Completes every prompt ``params.num_samples`` times.

    Args:
      prompts: token ids per prompt (each non-empty); the text that follows ``prefix``.
      params: sampling parameters.
      prefix: token ids shared by every prompt, prepended to each (e.g. a system prompt).
      hydragen: keep shared spans (prefix, and each prompt when ``num_samples > 1``) out of
        the per-sequence caches and attend to them once per sharing group. False: the plain
        path, every sequence caches its full prompt.
    """
    prompts = [list(map(int, p)) for p in prompts]
    prefix = list(map(int, prefix or []))
    params.validate(len(prompts))
    self.check_request(prompts, prefix, params.max_new_tokens)
    n = params.num_samples
    dp = self._data_parallel()
    slots = bucket(len(prompts), minimum=dp)
    slots = -(-slots // dp) * dp
    batch = slots * n
    new_len = bucket(params.max_new_tokens)

    t0 = time.perf_counter()
    if hydragen:
      last_logits, cache, positions, prefill_tokens = self._prefill_hydragen(
          prompts, prefix, slots, n, new_len)
    else:
      last_logits, cache, positions, prefill_tokens = self._prefill_plain(
          prompts, prefix, slots, n, new_len)
    jax.block_until_ready(last_logits)
    t1 = time.perf_counter()

    seeds = ([params.seed] * len(prompts) if isinstance(params.seed, int)
             else list(params.seed))
    seeds = np.repeat(np.array(seeds + [0] * (slots - len(prompts)), np.int64) % (1 << 32), n)
    seeds = seeds.astype(np.uint32)
    sample_index = np.tile(np.arange(n, dtype=np.int32), slots)
    done = np.repeat(np.arange(slots) >= len(prompts), n)
    stop = np.full((MAX_STOP_TOKENS,), -1, np.int32)
    stop[:len(params.stop_tokens)] = params.stop_tokens
    out, _ = self._run(
        _decode, self.graphdef, self.params, cache, last_logits, positions, done,
        np.full((batch, new_len), self.pad_id, np.int32), np.int32(params.max_new_tokens),
        seeds, sample_index, np.full((batch,), params.temperature, np.float32),
        np.full((batch,), params.top_k, np.int32),
        np.full((batch,), params.top_p, np.float32), stop, np.int32(self.pad_id),
        np.int32(self.vocab_limit))
    out = np.asarray(out)
    t2 = time.perf_counter()
    return self._collect(out, len(prompts), n, params, prefill_tokens, t1 - t0, t2 - t1)

  def _prefill_plain(self, prompts, prefix, slots, n, new_len):
    """Every row caches its full sequence. The shared prefix's KV is computed once and
    copied into each row (prefix caching: prefill work is shared, decode reads are not)."""
    lengths = [len(prefix) + len(p) for p in prompts] + [len(prefix) + 1] * (slots - len(prompts))
    prefix_len = bucket(len(prefix)) if prefix else 0
    cache_len = prefix_len + bucket(max(map(len, prompts))) + new_len
    cache = self._suffix_cache(slots, cache_len, None, None)
    if prefix:
      prefix_cache = self._suffix_cache(1, prefix_len, None, None)
      _, prefix_cache = self._prefill_rows([prefix], 1, prefix_cache, 0)
      cache = _copy_prefix(cache, prefix_cache)
    last, cache = self._prefill_rows(prompts, slots, cache, len(prefix))
    if n > 1:  # every sample continues from a copy of its prompt's cache
      last = jnp.repeat(last, n, axis=0)
      cache = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), cache)
    positions = np.repeat(np.array(lengths, np.int32), n)
    return last, cache, positions, len(prefix) + sum(map(len, prompts))

  def _prefill_hydragen(self, prompts, prefix, slots, n, new_len):
    batch = slots * n
    prefix_levels, prefill_tokens = [], 0
    if prefix:  # level 0: the shared prefix, prefilled once with batch 1
      cache = self._suffix_cache(1, bucket(len(prefix)), None, None)
      _, cache = self._prefill_rows([prefix], 1, cache, 0)
      prefix_levels.append((cache, len(prefix)))
      prefill_tokens += len(prefix)

    def levels_for(group_sizes):
      return [[PrefixLevel(c["k"], c["v"], group_sizes, jnp.full((1,), length, jnp.int32))
               for c in cache] for cache, length in prefix_levels]

    lengths = np.array([len(p) for p in prompts] + [1] * (slots - len(prompts)), np.int32)
    prompt_len = bucket(lengths.max())
    offset = np.full((slots,), len(prefix), np.int32)
    suffix_len = prompt_len if n > 1 else prompt_len + new_len
    cache = self._suffix_cache(slots, suffix_len, levels_for((slots,)), offset)
    last, cache = self._prefill_rows(prompts, slots, cache, offset)
    prefill_tokens += int(lengths[:len(prompts)].sum())
    positions = len(prefix) + lengths
    if n == 1:
      return last, cache, positions, prefill_tokens
    # Level 1: each prompt's KV, shared by its n samples (contiguous rows).
    prompt_level = [PrefixLevel(c["k"], c["v"], (n,) * slots, jnp.asarray(lengths))
                    for c in cache]
    levels = levels_for((batch,)) + [prompt_level]
    cache = self._suffix_cache(batch, new_len, levels, np.repeat(positions, n))
    return jnp.repeat(last, n, axis=0), cache, np.repeat(positions, n), prefill_tokens

  def _collect(self, out, num_prompts, n, params, prefill_tokens, prefill_s, decode_s):
    out = out[:num_prompts * n, :params.max_new_tokens].reshape(num_prompts, n, -1)
    stops = set(params.stop_tokens)
    tokens, reasons = [], []
    for p in range(num_prompts):
      tokens.append([])
      reasons.append([])
      for j in range(n):
        row = out[p, j].tolist()
        end = next((i + 1 for i, t in enumerate(row) if t in stops), None)
        tokens[p].append(row[:end] if end else row)
        reasons[p].append("stop" if end else "length")
    return Generation(tokens=tokens, token_array=out, finish_reasons=reasons,
                      prefill_tokens=prefill_tokens, prefill_s=prefill_s,
                      decode_tokens=sum(len(t) for ts in tokens for t in ts),
                      decode_s=decode_s)
