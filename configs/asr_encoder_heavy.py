"""asr_encoder_heavy: 10 encoder / 1 decoder blocks at d_model 128, Canary-1B-Flash's 32/4
move scaled down: the decoder's parameters go to the encoder
(configs/asr_balanced.py and configs/asr_encoder_heavy.py have about equal parameter counts:
4.43M and 4.31M). Compare their WER and RTFx after the same training compute.

  python train/main.py --config configs/asr_encoder_heavy.py --workdir workdirs/asr_encoder_heavy
  python -m train.oomptimizer --config configs/asr_encoder_heavy.py --target h200 \\
      --out workdirs/asr_encoder_heavy_h200.json
  python infer/asr.py --checkpoint workdirs/asr_encoder_heavy/export a.wav
"""
from configs import common


def get_config():
  c = common.asr_config(enc_layers=10, dec_layers=1, d_model=128, n_heads=4, head_dim=32,
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
