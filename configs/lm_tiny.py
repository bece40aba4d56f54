"""lm_tiny: the embedded default — a 0.8M-parameter Llama-style byte-level LM on the bundled
Python-stdlib corpus, 300 steps of 16 x 256 bytes. Trains on a 2-core CPU in minutes and
ends far below the corpus' unigram entropy.

  python train/main.py --config configs/lm_tiny.py --workdir workdirs/lm_tiny
"""
from configs import common


def get_config():
  c = common.base_config(size="tiny")
  c.data.seq_len = 256
  c.train.steps = 300
  c.train.global_batch_size = 16
  c.train.log_every = 25
  c.train.eval_every = 150
  c.train.eval_batches = 16
  c.train.checkpoint_every = 150
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 60
  return c
