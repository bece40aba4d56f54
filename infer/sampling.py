"""Token sampling: greedy, temperature, top-k, top-p (nucleus), one PRNG stream per sequence.

Every parameter is a per-row array, so one compiled decode step serves any mix of requests:

* ``temperature == 0``: greedy (``argmax``), no randomness;
* otherwise logits are divided by the temperature, then filtered:
  - top-k (``k > 0``): keep the ``k`` largest logits (ties with the k-th are kept too);
  - top-p (``0 < p < 1``): keep the smallest set of most likely tokens whose probability
    mass is ``>= p`` (Holtzman et al. 2020, arXiv 1904.09751): sorted descending, token
    ``i`` is kept iff the mass strictly before it is ``< p``;
  and a token is drawn from the softmax of what is left.

PRNG: a request seed ``s``, its sample index ``j`` and the decode step ``t`` give the key
``fold_in(fold_in(key(s), j), t)``, so a request's tokens do not depend on which other
requests share its batch, or on its row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def row_keys(seeds, sample_index):
  """Typed PRNG keys ``[B]`` of request seeds ``int32[B]`` and sample indices ``int32[B]``."""
  return jax.vmap(lambda s, j: jax.random.fold_in(jax.random.key(s), j))(seeds, sample_index)


def filter_logits(logits, top_k, top_p):
  """Masks (to ``-inf``) tokens outside each row's top-k and top-p sets.

  Args:
    logits: ``f32[B, V]`` (already divided by the temperature).
    top_k: ``int32[B]``; ``<= 0`` disables.
    top_p: ``f32[B]``; ``>= 1`` disables.
  """
  vocab = logits.shape[-1]
  sorted_desc = -jnp.sort(-logits, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)
  sorted_desc = jnp.where(sorted_desc >= kth, sorted_desc, -jnp.inf)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = (mass_before < top_p[:, None]) & jnp.isfinite(sorted_desc)
  # The smallest logit still kept is the row's threshold (the top token is always kept).
  threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample(logits, keys, step, temperature, top_k, top_p):
  """Next tokens ``int32[B]`` from ``logits f32[B, V]``; ``keys``: :func:`row_keys`."""
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def draw():
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    masked = filter_logits(scaled, top_k, top_p)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    drawn = jax.vmap(jax.random.categorical)(step_keys, masked).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)

  # All-greedy batches skip the vocabulary sort (both branches compile once).
  return jax.lax.cond(jnp.any(temperature > 0), draw, lambda: greedy)
