"""sft_arith: the supervised warm start for RL on arithmetic: the tiny byte-level LM trained on
`arith_sft` (problem + reference completion, RL's held-out problems left out), whose export
configs/rl_arith.py then improves with RL. Prepare the data first (once, no download):

  python -m rl.tasks.arith_sft --data_dir workdirs/arith_data
  python train/main.py --config configs/sft_arith.py --workdir workdirs/sft_arith \\
      --config.data.data_dir=workdirs/arith_data
"""
from configs import common


def get_config():
  c = common.base_config(size="tiny")
  c.data.name = "arith_sft"
  c.data.seq_len = 64
  c.train.steps = 300
  c.train.global_batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.eval_batches = 4
  c.train.checkpoint_every = 300
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 30
  return c
