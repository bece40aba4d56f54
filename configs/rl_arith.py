"""rl_arith: AReaL-style asynchronous RL on 1-2 digit addition with a tiny byte-level model on
the CPU, starting from the SFT warm start of configs/sft_arith.py (its export); an empty
rl.init_export starts from a random model instead (rewards then stay near 0).

  python rl/main.py --config configs/rl_arith.py --workdir workdirs/rl_arith --cpu_devices=2
  python rl/main.py --config configs/rl_arith.py --workdir workdirs/rl_arith_eta2 \\
      --cpu_devices=2 --config.rl.eta=2
"""
from configs import common


def get_config():
  c = common.rl_config(size="tiny")
  c.rl.init_export = "workdirs/sft_arith/export"
  c.rl.versions = 20
  c.rl.eta = 1
  return c
