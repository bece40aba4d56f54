"""Tasks: what the train loop trains. The loop (train/loop.py) owns the mesh, sharded init,
checkpoints with the iterator state, preemption, metrics, the eval cadence and profiling; a
task owns the model, the data, the loss and the eval metrics. A new kind of training (an
encoder-decoder model, a sampler, RL) adds a task here, not a branch in the loop.

A task is built from the whole config (``config.task`` names it) and provides:

* ``model`` / ``model_cfg``: the model module (``models.registry``) and its config;
* ``validate(global_batch_size)``: every check that needs no data or device, raising a
  ValueError that names the config key (runs before anything is written);
* ``train_iterator(batch_size, seed)``: host-local batches forever, with ``get_state`` /
  ``set_state`` (saved in the checkpoint);
* ``eval_batches(batch_size)``: one finite pass of host-local batches;
* ``batch_spec(global_batch_size)``: ``{name: ShapeDtypeStruct}`` of a global batch;
* ``forward(graphdef, params, batch, rng)`` -> outputs, and ``loss(outputs, batch)`` ->
  ``(sum, count)`` (sums, so microbatches add; training strategies such as SSO use the two
  separately);
* ``eval_sums(graphdef, params, batch)`` -> dict of sums over a batch, and
  ``eval_metrics(sums)`` -> the named metrics (``eval_loss`` first);
* ``export_extra()``: JSON metadata an export needs (a tokenizer spec);
* ``final_metrics(config)``: extra numbers printed at the end of a run (may be empty).
"""
from __future__ import annotations

import importlib

TASKS = {
    "lm": "train.tasks.lm",              # language modelling on packed text
    "classify": "train.tasks.classify",  # image classification (digits)
    "asr": "train.tasks.asr",            # speech recognition (attention encoder-decoder)
}


def build(config):
  """The task ``config.task`` names, built from ``config``."""
  name = config.get("task", "lm")
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r} (config.task); available: "
                     f"{', '.join(sorted(TASKS))}.")
  return importlib.import_module(TASKS[name]).Task(config)
