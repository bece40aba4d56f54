"""LAMB large-batch recipe (You et al. 2019) on the bundled corpus.

  python train/main.py --config configs/lm_lamb_largebatch.py --workdir workdirs/lamb_bs1024
  python train/main.py --config configs/lm_lamb_largebatch.py:batch=2048,base_lr=1e-2 --workdir ...

The paper's recipe: LAMB, linear warmup then polynomial decay (power 1), learning rate scaled
with the square root of the batch size (lr = base_lr * sqrt(batch / base_batch)), and a fixed
token budget so a larger batch takes proportionally fewer steps. Gradient accumulation
(``train.microbatches``) reaches the large global batch on small hardware: at most
``max_rows_per_microbatch`` rows go through the model at once.
"""
import math

from configs import common

BASE_BATCH = 16
BASE_LR = 2e-3
TOKEN_BUDGET = 2**20  # tokens seen in training, whatever the batch
WARMUP_FRACTION = 0.1
MAX_ROWS_PER_MICROBATCH = 256


def get_config(arg: str | None = None):
  batch, optimizer, base_lr = 1024, "lamb", BASE_LR
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key == "batch":
      batch = int(value)
    elif key == "optim":
      optimizer = value
    elif key == "base_lr":
      base_lr = float(value)
    else:
      raise ValueError(f"unknown config argument {key!r}; use batch=, optim=, base_lr=.")
  c = common.base_config(size="tiny")
  c.model.d_model = 64
  c.model.n_layers = 2
  c.model.n_heads = 2
  c.model.n_kv_heads = 1
  c.model.mlp_dim = 192
  c.data.seq_len = 64
  c.train.global_batch_size = batch
  c.train.microbatches = max(1, batch // MAX_ROWS_PER_MICROBATCH)
  c.train.steps = max(1, TOKEN_BUDGET // (batch * c.data.seq_len))
  c.train.log_every = max(1, c.train.steps // 20)
  c.train.eval_every = c.train.steps
  c.train.eval_batches = -1  # the whole validation split: the same tokens for every batch size
  c.train.checkpoint_every = c.train.steps
  c.train.export = False
  c.optim.name = optimizer
  c.optim.lr = base_lr * math.sqrt(batch / BASE_BATCH)
  c.optim.schedule = "poly"
  c.optim.power = 1.0
  c.optim.end_lr_ratio = 0.0
  c.optim.warmup_steps = max(1, int(WARMUP_FRACTION * c.train.steps))
  c.optim.weight_decay = 0.01
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  return c
