"""The text victim of a ReCIT audit: a small decoder fine-tuned with PEFT on private notes.

The client holds ``params = {"base", "peft"}`` (:mod:`models.lora`) and shares the gradient of
its mean next-token loss with respect to ``params["peft"]`` only (the base is frozen). The loss
reads its inputs as *distributions* over the vocabulary, ``x_t = p_t @ E`` and
``CE_t = -sum_v p_{t+1,v} log softmax(logits_t)_v``: one-hot rows for real text (then it is
exactly the model's loss: the embedding gradient of a one-hot lookup is the same row scatter as
``take``'s), soft rows for a continuous-relaxation attack. One code path, so the attacks
differentiate exactly the function the client did.

The audit model is lm_tiny-sized but narrower (``AUDIT_MODEL``: d 64, 2 layers) with
*untied* embeddings, so the input embedding's gradient rows are exactly the batch's input
tokens (breaching's untied rule); a tied output projection would give every row a gradient.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import configs, functional, lora

AUDIT_MODEL = dict(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=16, mlp_dim=192, tie_embeddings=False)


def peft_config(rank: int = 8, targets=("q_proj", "v_proj", "embed"), alpha: float = 16.0,
                peft: str = "lora", **model) -> configs.PeftConfig:
  return configs.PeftConfig(**{**AUDIT_MODEL, **model}, peft=peft, lora_rank=rank,
                            lora_alpha=alpha, peft_targets=tuple(targets))


def logits(graph: lora.Graph, params, soft, mask):
  """``[B, T, V]`` logits of notes given as token distributions ``soft [B, T, V]``."""
  eff = lora.effective_params(params, graph.cfg)
  model = functional.merge(graph.decoder, eff)
  b, t, _ = soft.shape
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  x = soft @ eff["embed"]["embedding"].astype(soft.dtype)
  for block in model.layers:
    x, _ = block(x, positions, mask)
  x = model.final_norm(x)
  return model.embed.attend(x) if graph.cfg.tie_embeddings else model.lm_head(x)


def soft_inputs(batch, vocab_size: int):
  """The batch's token distributions: ``batch["soft"]``, or one-hot ``batch["tokens"]``."""
  if "soft" in batch:
    return batch["soft"]
  return jax.nn.one_hot(batch["tokens"], vocab_size, dtype=jnp.float32)


def loss_terms(graph: lora.Graph, params, batch):
  """``(CE [B, T-1], weights [B, T-1])``: term ``t`` predicts position ``t + 1``. Weights are
  ``batch["weights"]`` when given (a single term, for the attacks), else the mask of real
  targets."""
  soft = soft_inputs(batch, graph.cfg.vocab_size)
  mask = jnp.asarray(batch["mask"])
  logp = jax.nn.log_softmax(logits(graph, params, soft, mask).astype(jnp.float32), axis=-1)
  ce = -jnp.sum(soft[:, 1:] * logp[:, :-1], axis=-1)
  weights = batch["weights"] if "weights" in batch else mask[:, 1:].astype(jnp.float32)
  return ce, weights


def mean_loss(graph: lora.Graph, params, batch):
  """The client's training loss: mean next-token cross-entropy over the batch's targets."""
  ce, w = loss_terms(graph, params, batch)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def summed_loss(graph: lora.Graph, params, batch):
  ce, w = loss_terms(graph, params, batch)
  return jnp.sum(ce * w)


@dataclasses.dataclass(frozen=True)
class TextVictim:
  """What the server knows: the graph (with the PEFT settings) and all weights of the round."""
  graph: lora.Graph
  params: dict

  @property
  def vocab_size(self) -> int:
    return self.graph.cfg.vocab_size

  def peft_gradient(self, batch, loss=mean_loss):
    """``d loss / d params["peft"]``: what a PEFT client shares (differentiable in ``batch``)."""
    return _peft_gradient(self.graph, loss, self.params, batch)

  def embedding_gradient(self, batch):
    """``d loss / d E`` of the base's input embedding: what a client that also trains its
    embeddings shares in that leaf (the token-set baseline's classic setting)."""
    return _embedding_gradient(self.graph, self.params, batch)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _peft_gradient(graph, loss, params, batch):
  base = params["base"]
  return jax.grad(lambda peft: loss(graph, {"base": base, "peft": peft}, batch))(params["peft"])


@functools.partial(jax.jit, static_argnums=0)
def _embedding_gradient(graph, params, batch):
  def loss(emb):
    base = {**params["base"], "embed": {"embedding": emb}}
    return mean_loss(graph, {"base": base, "peft": params["peft"]}, batch)
  return jax.grad(loss)(params["base"]["embed"]["embedding"])


def flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def train_steps(loss_fn, params, batches, *, lr: float = 3e-3):
  """Adam on ``loss_fn(params, batch)`` over ``batches`` (a list of batches); returns params.
  Used by the attacker's malicious pre-fine-tuning and the client's earlier rounds."""
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    loss, g = jax.value_and_grad(loss_fn)(params, batch)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  losses = []
  for batch in batches:
    params, opt, loss = step(params, opt, batch)
    losses.append(float(loss))
  return params, np.asarray(losses)
