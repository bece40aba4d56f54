"""rl_arith: AReaL-style asynchronous RL on 2-digit addition with a tiny byte-level model on
the CPU. Without rl.init_export the policy starts random and rewards stay near 0; point it at
the SFT warm start (configs/sft_arith.py) to see RL raise held-out accuracy.

  python rl/main.py --config configs/rl_arith.py --workdir workdirs/rl_arith
  python rl/main.py --config configs/rl_arith.py --workdir workdirs/rl_arith \\
      --config.rl.init_export=workdirs/sft_arith/export --config.rl.eta=2
"""
from configs import common


def get_config():
  c = common.rl_config(size="tiny")
  c.rl.versions = 20
  c.rl.eta = 1
  return c
