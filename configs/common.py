"""Shared defaults for language-model configs. Each experiment file overrides what it needs.

Sections: ``model`` (fields of models.transformer.ModelConfig), ``data``, ``train``,
``optim``, ``mesh``. Every key exists here, so an unknown ``--config.x.y`` fails with the
closest valid key.
"""
import ml_collections

from data import pipeline as data_pipeline
from models import transformer


def base_config(size: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = transformer.preset(size).to_dict()

  # name: "python_stdlib" (the bundled corpus) or any locally prepared TFDS text dataset;
  # tokenizer: "byte" | "sentencepiece:PATH" | "hf:PATH/tokenizer.json".
  c.data = data_pipeline.default_config()
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default
  c.data.max_files = ml_collections.config_dict.placeholder(int)
  c.data.seq_len = 256

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.global_batch_size = 16
  c.train.microbatches = 1  # gradient accumulation: global batch split into this many
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 16  # -1: the whole validation split
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.async_checkpoint = True
  c.train.restore_step = ml_collections.config_dict.placeholder(int)  # None: latest
  c.train.export = True  # params-only export to WORKDIR/export at the end
  c.train.export_dtype = "float32"
  c.train.profile_start = 10
  c.train.profile_steps = 0  # >0: jax.profiler trace of that many steps into WORKDIR/profile

  # Generic optimizer fields; a sub-section per optimizer holds its own (train/optimizer.py).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # adamw | lamb | sgd | sso (optim/registry.py)
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"  # cosine | poly | constant, after linear warmup
  c.optim.warmup_steps = 100
  c.optim.end_lr_ratio = 0.1
  c.optim.power = 1.0  # poly schedule
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.grad_clip = 1.0  # global-norm clipping; 0 disables
  c.optim.lamb = ml_collections.ConfigDict()
  c.optim.lamb.bias_correction = True
  c.optim.lamb.trust_clip = ml_collections.config_dict.placeholder(tuple)  # (lo, hi) or None
  c.optim.sso = ml_collections.ConfigDict()
  c.optim.sso.inner = "adamw"  # the optax optimizer taking the m cheap steps
  c.optim.sso.m = 4  # inner steps per expensive target-space gradient
  c.optim.sso.eta = 1.0  # per-token target-space step on the logits; softmax CE is 1/2-smooth, so <= 2
  c.optim.sso.eta_schedule = "constant"  # constant | inv_sqrt

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = ml_collections.config_dict.placeholder(tuple)  # None: train.sharding defaults
  return c
