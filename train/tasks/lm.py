"""Language modelling: next-token cross-entropy on packed rows of a text dataset.

Batches ``{tokens, segment_ids, positions}`` come from :mod:`data.pipeline` (documents packed
into rows; attention and loss never cross documents). The loss is the summed next-token NLL
(:func:`models.transformer.lm_loss`); evaluation reports loss, perplexity and bits per byte,
and the end of a run prints the validation split's unigram entropy, the loss a model that
ignores context would reach.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from data import pipeline, tokenizers
from models import registry


class Task:

  def __init__(self, config):
    self.config = config
    self.model, self.model_cfg = registry.from_dict(config.model.to_dict())
    if not hasattr(self.model, "lm_loss"):
      raise ValueError(f"task 'lm' trains language models; config.model.name="
                       f"{config.model.get('name')!r} is not one (use 'transformer').")
    self.data = config.data
    self.seq_len = int(config.data.seq_len)
    self.tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
    if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
      raise ValueError(f"tokenizer {config.data.tokenizer!r} has {self.tokenizer.vocab_size} "
                       f"tokens but model.vocab_size={self.model_cfg.vocab_size}; raise "
                       "--config.model.vocab_size.")
    # Bytes per token id, zero for ids the tokenizer never emits (model vocab is padded).
    self.token_bytes = np.zeros(self.model_cfg.vocab_size, np.float32)
    self.token_bytes[:self.tokenizer.vocab_size] = self.tokenizer.token_bytes

  def validate(self, global_batch_size: int) -> None:
    if self.seq_len < 2:
      raise ValueError(f"data.seq_len={self.seq_len} must be >= 2 (a target needs a context).")

  # --------------------------------------------------------------------------------- data --

  def train_iterator(self, batch_size: int, seed: int):
    return pipeline.make_lm_iterator(self.data, split=self.data.train_split,
                                     seq_len=self.seq_len, batch_size=batch_size, seed=seed,
                                     shuffle=True)

  def eval_batches(self, batch_size: int):
    it = pipeline.make_lm_iterator(self.data, split=self.data.eval_split, seq_len=self.seq_len,
                                   batch_size=batch_size, seed=0, shuffle=False, num_epochs=1)
    n = int(self.config.train.eval_batches)
    for i, batch in enumerate(it):
      if 0 <= n <= i:
        break
      yield batch

  def batch_spec(self, global_batch_size: int) -> dict:
    return {k: jax.ShapeDtypeStruct((global_batch_size, self.seq_len), jnp.int32)
            for k in pipeline.BATCH_KEYS}

  # -------------------------------------------------------------------------------- model --

  def forward(self, graphdef, params, batch, rng=None):
    del rng  # no dropout
    return self.model.apply(graphdef, params, batch["tokens"], batch["positions"],
                            batch["segment_ids"])

  def loss(self, logits, batch):
    return self.model.lm_loss(logits, batch)

  def eval_sums(self, graphdef, params, batch):
    return self.model.lm_eval_sums(self.forward(graphdef, params, batch), batch,
                                   self.token_bytes)

  @staticmethod
  def eval_metrics(sums) -> dict[str, float]:
    loss = sums["nll"] / max(sums["tokens"], 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
            "eval_bits_per_byte": sums["nll"] / math.log(2) / max(sums["bytes"], 1.0),
            "eval_tokens": sums["tokens"]}

  def describe_eval(self, m) -> str:
    return (f"eval loss {m['eval_loss']:.4f} | ppl {m['eval_perplexity']:.2f} | "
            f"bits/byte {m['eval_bits_per_byte']:.4f}")

  def throughput(self, batch) -> tuple[float, str]:
    """Tokens this host's batch holds, times the hosts: the progress line's tok/s."""
    return batch["tokens"].size * jax.process_count(), "tok"

  def export_extra(self) -> dict:
    return {"tokenizer": str(self.data.tokenizer)}

  def final_metrics(self, last_eval) -> tuple[dict, str]:
    """The bar to beat: a model that ignores context scores the unigram entropy."""
    h1 = pipeline.unigram_entropy(self.data, self.data.eval_split)
    return {"unigram_entropy": h1}, (
        f"final validation loss {last_eval['eval_loss']:.4f} nats/token vs unigram entropy "
        f"{h1:.4f} nats/token of the validation split")
