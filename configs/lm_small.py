"""lm_small: a 5M-parameter byte-level LM on the bundled corpus (CPU, ~30 min): a model worth
quantizing (quant/ reports are made on it).

  python train/main.py --config configs/lm_small.py --workdir workdirs/lm_small
"""
from configs import common


def get_config():
  c = common.base_config(size="small")
  c.data.seq_len = 256
  c.train.steps = 2000
  c.train.global_batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 32
  c.train.checkpoint_every = 500
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  return c
