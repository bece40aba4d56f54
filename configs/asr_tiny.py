"""asr_tiny: a small Conformer encoder-decoder learning to transcribe the synthesized spoken
digits (data/tone_words.py) on a CPU in a few minutes; WER falls well below 100%.

  python train/main.py --config configs/asr_tiny.py --workdir workdirs/asr_tiny
  python infer/asr.py --checkpoint workdirs/asr_tiny/export a.wav
"""
from configs import common


def get_config():
  c = common.asr_config(enc_layers=2, dec_layers=1, d_model=64, n_heads=4, head_dim=16,
                        mlp_dim=192, subsampling_channels=32)
  c.data.num_train = 1024
  c.data.num_eval = 64
  c.data.max_duration = 48.0
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.eval_batches = -1
  c.train.checkpoint_every = 300
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 60
  c.optim.weight_decay = 1e-2
  return c
