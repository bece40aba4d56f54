"""rl_arith: AReaL-style asynchronous RL on 1-3 digit addition written out with a scratchpad
(column sums and carries, then ``#### answer``: completions of about 10 to 60 tokens, the long
tail that makes synchronous RL wait), a tiny byte-level model on the CPU, starting from the SFT
warm start of configs/sft_arith.py (its export). An empty rl.init_export starts from a random
model instead (rewards then stay near 0).

  python rl/main.py --config configs/rl_arith.py --workdir workdirs/rl_arith --cpu_devices=2
  python rl/main.py --config configs/rl_arith.py --workdir workdirs/rl_arith_eta2 \\
      --cpu_devices=2 --config.rl.eta=2

The SFT data (``python -m rl.tasks.arith_sft``) takes its digits, operators and held-out set
from this config's defaults, so the two agree unless both are changed.
"""
from configs import common


def get_config():
  c = common.rl_config(size="tiny")
  c.optim.lr = 3e-5  # 1e-4 already lowers held-out greedy accuracy; 3e-4 collapses the policy
  r = c.rl
  r.init_export = "workdirs/sft_arith/export"
  r.max_digits = 3
  r.max_new_tokens = 60  # the longest reference completion (3+3 digits) is 45 bytes
  r.eval_problems = 512
  r.eval_samples = 2
  r.token_budget = 256
  r.micro_batches = 8
  r.versions = 20
  r.eta = 1
  return c
