"""asr_balanced: 6 encoder / 6 decoder blocks at d_model 128, Canary-1B's 24/24 split scaled
down: as many decoder as encoder blocks
(configs/asr_balanced.py and configs/asr_encoder_heavy.py have about equal parameter counts:
4.43M and 4.31M). Compare their WER and RTFx after the same training compute.

  python train/main.py --config configs/asr_balanced.py --workdir workdirs/asr_balanced
  python -m train.oomptimizer --config configs/asr_balanced.py --target h200 \\
      --out workdirs/asr_balanced_h200.json
  python infer/asr.py --checkpoint workdirs/asr_balanced/export a.wav
"""
from configs import common


def get_config():
  c = common.asr_config(enc_layers=6, dec_layers=6, d_model=128, n_heads=4, head_dim=32,
                        mlp_dim=512, subsampling_channels=64)
  c.data.num_train = 4000
  c.data.num_eval = 200
  c.data.max_duration = 64.0
  c.train.steps = 3000
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_batches = -1
  c.train.checkpoint_every = 1000
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 1e-2
  return c
