"""Image classification: softmax cross-entropy of a classifier on labelled images.

The second task of the loop, on scikit-learn's bundled handwritten digits
(:mod:`data.digits`) with :mod:`models.convnet`; it trains, resumes, shards and exports
through the same loop as the language models. Padding rows (label -1) count nowhere.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from data import digits
from models import registry

DATASETS = ("digits",)


class Task:

  def __init__(self, config):
    self.config = config
    self.model, self.model_cfg = registry.from_dict(config.model.to_dict())
    self.data = config.data
    if self.data.name not in DATASETS:
      raise ValueError(f"data.name={self.data.name!r}: task 'classify' reads one of "
                       f"{DATASETS}.")
    if getattr(self.model_cfg, "num_classes", None) != 10:
      raise ValueError(f"the digits have 10 classes; set --config.model.num_classes=10 (got "
                       f"{getattr(self.model_cfg, 'num_classes', None)}).")

  def validate(self, global_batch_size: int) -> None:
    for split in (self.data.train_split, self.data.eval_split):
      if split not in digits.SPLITS:
        raise ValueError(f"digits split {split!r} is unknown; available: "
                         f"{sorted(digits.SPLITS)}.")

  # --------------------------------------------------------------------------------- data --

  def train_iterator(self, batch_size: int, seed: int):
    return digits.make_iterator(split=self.data.train_split, batch_size=batch_size, seed=seed,
                                shuffle=True, process_index=jax.process_index(),
                                process_count=jax.process_count())

  def eval_batches(self, batch_size: int):
    return digits.make_iterator(split=self.data.eval_split, batch_size=batch_size, seed=0,
                                shuffle=False, num_epochs=1, process_index=jax.process_index(),
                                process_count=jax.process_count())

  def batch_spec(self, global_batch_size: int) -> dict:
    c = self.model_cfg
    return {"images": jax.ShapeDtypeStruct(
                (global_batch_size, c.image_size, c.image_size, c.in_channels), jnp.float32),
            "labels": jax.ShapeDtypeStruct((global_batch_size,), jnp.int32)}

  # -------------------------------------------------------------------------------- model --

  def forward(self, graphdef, params, batch, rng=None):
    del rng
    return self.model.apply(graphdef, params, batch["images"])

  @staticmethod
  def loss(logits, batch):
    """``(sum of CE over real rows, number of real rows)``."""
    labels = batch["labels"]
    real = labels >= 0
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, jnp.maximum(labels, 0)[:, None], -1)[:, 0]
    return jnp.sum(jnp.where(real, nll, 0.0)), jnp.sum(real).astype(jnp.float32)

  def eval_sums(self, graphdef, params, batch):
    logits = self.forward(graphdef, params, batch)
    nll, count = self.loss(logits, batch)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) & (batch["labels"] >= 0))
    return {"nll": nll, "count": count, "correct": correct.astype(jnp.float32)}

  @staticmethod
  def eval_metrics(sums) -> dict[str, float]:
    n = max(sums["count"], 1.0)
    return {"eval_loss": sums["nll"] / n, "eval_accuracy": sums["correct"] / n,
            "eval_examples": sums["count"]}

  @staticmethod
  def describe_eval(m) -> str:
    return f"eval loss {m['eval_loss']:.4f} | accuracy {m['eval_accuracy']:.4f}"

  @staticmethod
  def throughput(batch) -> tuple[float, str]:
    return batch["labels"].size * jax.process_count(), "ex"

  def export_extra(self) -> dict:
    return {"dataset": str(self.data.name)}

  @staticmethod
  def final_metrics(last_eval) -> tuple[dict, str]:
    return {}, f"final validation accuracy {last_eval['eval_accuracy']:.4f}"
