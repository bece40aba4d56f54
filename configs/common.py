"""Shared defaults for configs. Each experiment file overrides what it needs.

Sections: ``task`` (what the loop trains, :mod:`train.tasks`), ``model`` (``name`` from
:mod:`models.registry` plus that model's config fields), ``data``, ``train``, ``optim``,
``mesh``. Every key exists here, so an unknown ``--config.x.y`` fails with the closest valid
key. Loading a config imports nothing heavy (no jax, no TFDS): only these plain defaults.
"""
import ml_collections

from data import defaults as data_defaults
from models import configs as model_configs


def train_config() -> ml_collections.ConfigDict:
  """The ``train`` section: steps, batch, cadences, checkpoints, export, profiling."""
  t = ml_collections.ConfigDict()
  t.steps = 1000
  t.global_batch_size = 16
  t.microbatches = 1  # gradient accumulation: global batch split into this many
  t.log_every = 50
  t.eval_every = 500
  t.eval_batches = 16  # -1: the whole validation split
  t.checkpoint_every = 500
  t.keep_checkpoints = 3
  t.async_checkpoint = True
  t.restore_step = ml_collections.config_dict.placeholder(int)  # None: latest
  t.export = True  # params-only export to WORKDIR/export at the end
  t.export_dtype = "float32"
  t.profile_start = 10
  t.profile_steps = 0  # >0: jax.profiler trace of that many steps into WORKDIR/profile
  return t


def optim_config() -> ml_collections.ConfigDict:
  """Generic optimizer fields; a sub-section per optimizer holds its own (train/optimizer.py)."""
  o = ml_collections.ConfigDict()
  o.name = "adamw"  # adamw | lamb | sgd | sso (optim/registry.py)
  o.lr = 1e-3
  o.schedule = "cosine"  # cosine | poly | constant, after linear warmup
  o.warmup_steps = 100
  o.end_lr_ratio = 0.1
  o.power = 1.0  # poly schedule
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1
  o.grad_clip = 1.0  # global-norm clipping; 0 disables
  o.lamb = ml_collections.ConfigDict()
  o.lamb.bias_correction = True
  o.lamb.trust_clip = ml_collections.config_dict.placeholder(tuple)  # (lo, hi) or None
  o.sso = ml_collections.ConfigDict()
  o.sso.inner = "adamw"  # the optax optimizer taking the m cheap steps
  o.sso.m = 4  # inner steps per expensive target-space gradient
  o.sso.eta = 1.0  # per-token target-space step on the logits; softmax CE is 1/2-smooth, so <= 2
  o.sso.eta_schedule = "constant"  # constant | inv_sqrt
  return o


def mesh_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.data = -1
  m.fsdp = 1
  m.tensor = 1
  m.rules = ml_collections.config_dict.placeholder(tuple)  # None: core.sharding defaults
  return m


def base_config(size: str = "tiny") -> ml_collections.ConfigDict:
  """A language-model config (task ``lm``, a ``transformer`` of preset ``size``)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "lm"
  c.model = {"name": "transformer", **model_configs.preset(size).to_dict()}

  # name: "python_stdlib" (the bundled corpus) or any locally prepared TFDS text dataset;
  # tokenizer: "byte" | "sentencepiece:PATH" | "hf:PATH/tokenizer.json".
  c.data = data_defaults.text_config()
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default
  c.data.max_files = ml_collections.config_dict.placeholder(int)
  c.data.seq_len = 256

  c.train = train_config()
  c.optim = optim_config()
  c.mesh = mesh_config()
  return c
