"""Text attacks on a PEFT client's shared gradient (:class:`privacy.text_victim.TextVictim`).

Registered names (``privacy.attacks.get``), each ``attack(shared, victim, meta, key)`` with
``shared`` the gradient with respect to ``params["peft"]`` (or ``{"embed": {"embedding": g}}``
when the client trains its full input embedding), returning ``{"tokens", "texts"}``: the
recovered token ids and the reconstructed notes.

* ``token_set`` (breaching's ``embedding-norm`` rule, untied): the input tokens are the rows of
  the embedding gradient with non-zero norm. With LoRA on the embedding (``A: [V, r]``, the
  row-indexed factor) the rows of ``dL/dA = dL/dE' B^T (alpha/r)`` are non-zero exactly for
  the input tokens as well. It recovers a set: no order, no counts, so no sequence.
* ``relaxation`` (DLG/LAMP-style, Zhu et al. 2019, Balunovic et al. 2022): optimise per-position
  logits ``Z [B, T, |S|]`` over the recovered token set ``S``; inputs ``softmax(Z)``; minimise
  ``1 - cos(grad(softmax Z), shared)`` with Adam, then take the argmax. Given the notes'
  lengths (``meta["lengths"]``), as DLG and LAMP assume. LAMP's discrete GPT-2-scored moves
  are not included.
* ``recit``: our honest version of ReCIT's extraction (Xie et al. 2025, arXiv:2504.20570; the
  paper's exact filter and pairing are not public). Documented in :func:`recit`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data import tokenizers
from privacy import pii_corpus
from privacy.attacks import register
from privacy import text_victim as tv
from privacy.text_victim import TextVictim, flat, summed_loss

_BYTE = tokenizers.ByteTokenizer()
SPECIALS = (_BYTE.pad_id, _BYTE.bos_id, _BYTE.eos_id)


def embedding_rows(shared):
  """``[V, k]``: the gradient leaf whose rows are indexed by input tokens."""
  embed = shared.get("embed", {}) if isinstance(shared, dict) else {}
  if "embedding" in embed:
    return embed["embedding"]
  if "a" in embed:
    return embed["a"]
  raise ValueError("the token-set filter needs a row-indexed gradient: a trainable embedding "
                   "({'embed': {'embedding': g}}) or LoRA on it (add 'embed' to "
                   "model.peft_targets); this gradient has only "
                   f"{sorted(shared) if isinstance(shared, dict) else type(shared).__name__}.")


def token_scores(shared) -> np.ndarray:
  """Per-token L2 norm of the embedding-side gradient rows."""
  return np.linalg.norm(np.asarray(embedding_rows(shared), np.float64), axis=-1)


def token_set(shared, *, rel_tol: float = 0.0) -> np.ndarray:
  """Token ids whose row norm exceeds ``rel_tol * max`` (0: exactly non-zero), specials and the
  model's padding rows (ids the byte tokenizer never emits) out."""
  scores = token_scores(shared)[:_BYTE.vocab_size]  # rows past the tokenizer: padding ids
  ids = np.flatnonzero(scores > rel_tol * scores.max())
  return np.asarray([i for i in ids if i not in SPECIALS], np.int32)


@register("token_set")
def token_set_attack(shared, victim: TextVictim, meta: dict, key):
  del victim, key
  ids = token_set(shared, rel_tol=float(meta.get("rel_tol", 0.0)))
  # One "note": the set in id order (the attack has no order to offer).
  return {"tokens": ids, "texts": [_BYTE.decode(ids)]}


def _cosine_loss(a, b):
  return 1.0 - jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)


def _lengths_mask(lengths, seq_len):
  return (np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


@register("relaxation")
def relaxation(shared, victim: TextVictim, meta: dict, key):
  """``meta``: ``lengths`` (tokens per note with BOS/EOS), ``steps`` (300), ``lr`` (0.1)."""
  lengths = np.asarray(meta["lengths"])
  b, t, vocab = len(lengths), int(lengths.max()), victim.vocab_size
  cand = token_set(shared)
  mask = jnp.asarray(_lengths_mask(lengths, t))
  fixed = np.zeros((b, t, vocab), np.float32)  # BOS and EOS are where the format puts them
  fixed[:, 0, _BYTE.bos_id] = 1.0
  fixed[np.arange(b), lengths - 1, _BYTE.eos_id] = 1.0
  free = (mask * (1 - fixed.sum(-1))).astype(jnp.float32)[..., None]
  scatter = jax.nn.one_hot(cand, vocab)  # [|S|, V]
  target = flat(shared)

  def soft(z):
    return fixed + free * (jax.nn.softmax(z, axis=-1) @ scatter)

  def objective(z):
    return _cosine_loss(flat(victim.peft_gradient({"soft": soft(z), "mask": mask})), target)

  tx = optax.adam(float(meta.get("lr", 0.1)))
  z = 0.1 * jax.random.normal(key, (b, t, len(cand)))
  opt = tx.init(z)

  @jax.jit
  def step(z, opt):
    loss, g = jax.value_and_grad(objective)(z)
    upd, opt = tx.update(g, opt, z)
    return optax.apply_updates(z, upd), opt, loss

  for _ in range(int(meta.get("steps", 300))):
    z, opt, _ = step(z, opt)
  tokens = np.asarray(cand)[np.asarray(jnp.argmax(z, -1))]
  tokens = np.where(np.asarray(fixed.sum(-1)) > 0, np.argmax(fixed, -1), tokens)
  tokens = np.where(np.asarray(mask) > 0, tokens, _BYTE.pad_id)
  texts = pii_corpus.decode(tokens)
  return {"tokens": _content(tokens), "texts": texts}


def _content(tokens) -> np.ndarray:
  """The non-special token ids of ``tokens [B, T]`` (each note up to its EOS)."""
  out = []
  for row in np.asarray(tokens):
    row = list(row)
    row = row[:row.index(_BYTE.eos_id)] if _BYTE.eos_id in row else row
    out += [x for x in row if x not in SPECIALS]
  return np.asarray(out, np.int32)


def _term_gradients(victim: TextVictim):
  """``f(tokens [N, T], t) -> [N, P]``: per sequence, the flat PEFT gradient of the single loss
  term that predicts position ``t`` (the terms of a causal LM depend on the prefix only)."""
  def one(tokens, t):
    seq = tokens[None]
    weights = jax.nn.one_hot(t - 1, seq.shape[1] - 1)[None]
    batch = {"tokens": seq, "mask": (jnp.arange(seq.shape[1]) <= t)[None].astype(jnp.int32),
             "weights": weights}
    return flat(victim.peft_gradient(batch, loss=summed_loss))
  return jax.jit(jax.vmap(one, in_axes=(0, None)))


def _prior(victim: TextVictim):
  """``f(tokens [B, T], mask) -> log p [B, T, V]`` of the round's model (the attacker's)."""
  def logp(tokens, mask):
    soft = jax.nn.one_hot(tokens, victim.vocab_size)
    return jax.nn.log_softmax(tv.logits(victim.graph, victim.params, soft, mask), -1)
  return jax.jit(logp)


@register("recit")
def recit(shared, victim: TextVictim, meta: dict, key):
  """ReCIT-style extraction (ours): a token filter, then sequences rebuilt by gradient pairing.

  1. **Filter**: the candidate tokens are the token set ``S`` of the embedding-side rows
     (:func:`token_set`) plus EOS.
  2. **Pairing** (greedy matching pursuit over prefixes): every note grows from BOS. At step
     ``t`` each unfinished note proposes its ``top_k`` next tokens in ``S`` under the round's
     model (the attacker's, maliciously pre-fine-tuned on "personal notes": it knows the notes'
     template, so template positions come with one confident candidate, ``p >= confident``,
     taken as is). For each proposal the PEFT gradient ``D_v`` of the single loss term
     predicting it is computed (a causal LM's term ``t`` depends on the prefix only, so
     ``shared = (1/N) sum_terms D``). Starting from ``r = shared``, notes take turns: note
     ``b`` attaches the ``v`` maximising ``cos(D_v, r) + prior_weight * log p(v | prefix)``
     and the residual drops ``r <- r - a D_v`` with ``a = max(0, <D_v, r> / |D_v|^2)``
     (matching pursuit): a token is paired with the prefix whose conditioned gradient best
     explains what is left of the shared gradient. (Subtracting ``D_v`` at the known scale
     ``N * shared`` instead scored worse in our trials.)
     **Coverage**: the filter is exact, so every token of ``S`` occurs somewhere in the batch.
     A token no note has placed yet gets ``+ coverage`` in the score (and in the ranking that
     picks the ``top_k`` proposals, ``prior_weight * log p + coverage * unused``). Why: notes
     that share a prefix (all start at BOS; many share "My name is ") see the *same* proposals
     and, at batch 16, gradient cosines of a few hundredths either way; when the chosen ``D_v``
     points away from the residual (``a = 0``) nothing is subtracted, so every later note makes
     the same choice and the batch collapses onto one template and the prior's favourite name.
     The filter says which capitals (names) and first letters (templates) are in the batch;
     coverage spends each of them once before the prior's favourite is repeated.
     A note ends at EOS or ``max_len``.
  3. **Refinement** (``sweeps`` rounds of coordinate descent, exact in the batch): the shared
     gradient is proportional to ``sum_b G_b``, ``G_b`` the summed-loss gradient of note ``b``.
     For every position where step 2 had a choice, each of its proposals is put in place, the
     note's whole gradient recomputed (the later terms see the new prefix) and the one that
     maximises ``cos(sum_b G_b, shared)`` kept. Lengths stay as step 2 found them.

  ``meta``: ``batch_size`` (B, known to the server), ``max_len`` (tokens per note incl.
  BOS/EOS), ``top_k`` (8), ``prior_weight`` (0.1), ``confident`` (0.9), ``coverage`` (0.3;
  0 turns it off), ``sweeps`` (1; at batch 16 one sweep lowered the exact PII recovery in our
  trials: the gradient cosine alone, without the prior, prefers non-words there).
  """
  del key  # deterministic: notes take turns in index order
  b, t_max = int(meta["batch_size"]), int(meta["max_len"])
  k = int(meta.get("top_k", 8))
  weight, confident = float(meta.get("prior_weight", 0.1)), float(meta.get("confident", 0.9))
  coverage = float(meta.get("coverage", 0.3))
  allowed = np.zeros(victim.vocab_size, bool)
  allowed[token_set(shared)] = True
  allowed[_BYTE.eos_id] = True
  k = min(k, int(allowed.sum()))
  tokens = np.full((b, t_max), _BYTE.pad_id, np.int32)
  tokens[:, 0] = _BYTE.bos_id
  active = np.ones(b, bool)
  residual = np.asarray(flat(shared), np.float64)
  grads, prior = _term_gradients(victim), _prior(victim)
  choices = []  # (note, position, proposals) where step 2 had a choice
  unused = allowed.copy()  # filtered tokens no note has placed yet
  unused[_BYTE.eos_id] = False
  for t in range(1, t_max):
    if not active.any():
      break
    mask = np.broadcast_to(np.arange(t_max) < t, (b, t_max)).astype(np.int32)
    logp = np.asarray(prior(tokens, mask))[:, t - 1]
    logp = np.where(allowed, logp, -np.inf)
    # Proposals: the top_k of the score's prior part (+ the coverage bonus, see below); the
    # deltas are computed once per step, before the notes take turns.
    top = np.argsort(-(weight * logp + coverage * unused), axis=-1, kind="stable")[:, :k]
    likeliest = np.argmax(logp, axis=-1)  # always a proposal (the confident case takes it)
    missing = ~(top == likeliest[:, None]).any(-1)
    top[missing, -1] = likeliest[missing]
    seqs = np.repeat(tokens[:, None], k, axis=1)
    seqs[:, :, t] = top
    deltas = np.asarray(grads(seqs.reshape(b * k, t_max), t), np.float64).reshape(b, k, -1)
    for i in np.flatnonzero(active):
      lp = np.take_along_axis(logp[i], top[i], -1)
      if np.exp(logp[i, likeliest[i]]) >= confident:
        choice = int(np.flatnonzero(top[i] == likeliest[i])[0])
      else:
        d = deltas[i]
        norms = np.linalg.norm(d, axis=-1) * max(np.linalg.norm(residual), 1e-30) + 1e-30
        choice = int(np.argmax(d @ residual / norms + weight * lp + coverage * unused[top[i]]))
        choices.append((i, t, top[i]))
      tokens[i, t] = top[i, choice]
      unused[tokens[i, t]] = False
      delta = deltas[i, choice]
      residual -= max(0.0, float(delta @ residual) / max(float(delta @ delta), 1e-30)) * delta
      if tokens[i, t] == _BYTE.eos_id:
        active[i] = False
  tokens = _refine(victim, shared, tokens, choices, int(meta.get("sweeps", 1)))
  return {"tokens": _content(tokens), "texts": pii_corpus.decode(tokens)}


def _note_gradients(victim: TextVictim):
  """``f(tokens [N, T]) -> [N, P]``: each note's flat PEFT gradient of its summed loss."""
  def one(tokens):
    seq = tokens[None]
    ends = jnp.cumsum(seq == _BYTE.eos_id, axis=1) - (seq == _BYTE.eos_id)
    batch = {"tokens": seq, "mask": ((ends == 0) & (seq != _BYTE.pad_id)).astype(jnp.int32)}
    return flat(victim.peft_gradient(batch, loss=summed_loss))
  return jax.jit(jax.vmap(one))


def _refine(victim: TextVictim, shared, tokens, choices, sweeps: int):
  """Step 3 of :func:`recit`: coordinate descent on ``cos(sum_b G_b, shared)``."""
  if not sweeps or not choices:
    return tokens
  note_grads = _note_gradients(victim)
  target = np.asarray(flat(shared), np.float64)
  target /= max(np.linalg.norm(target), 1e-30)
  per_note = np.asarray(note_grads(tokens), np.float64)
  total = per_note.sum(0)
  for _ in range(sweeps):
    for i, t, proposals in choices:
      seqs = np.repeat(tokens[i][None], len(proposals), axis=0)
      seqs[:, t] = proposals
      cand = np.asarray(note_grads(seqs), np.float64)
      sums = total - per_note[i] + cand
      cos = sums @ target / np.maximum(np.linalg.norm(sums, axis=-1), 1e-30)
      best = int(np.argmax(cos))
      tokens[i, t] = proposals[best]
      total, per_note[i] = sums[best], cand[best]
  return tokens
