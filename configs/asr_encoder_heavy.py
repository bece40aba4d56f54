"""asr_encoder_heavy: 10 encoder / 1 decoder blocks at d_model 128, Canary-1B-Flash's 32/4
move scaled down: the decoder's parameters go to the encoder
(configs/asr_balanced.py and configs/asr_encoder_heavy.py have about equal parameter counts:
4.43M and 4.31M). Compare their WER and RTFx after the same training compute.

  python train/main.py --config configs/asr_encoder_heavy.py --workdir workdirs/asr_encoder_heavy
  python -m train.oomptimizer --config configs/asr_encoder_heavy.py --target h200 \\
      --out workdirs/asr_encoder_heavy_h200.json
  python infer/asr.py --checkpoint workdirs/asr_encoder_heavy/export a.wav
"""
from configs import asr_balanced


def get_config():
  """asr_balanced with its blocks moved to the encoder; everything else equal, so the two
  compare the split alone (4.43M vs 4.31M parameters)."""
  c = asr_balanced.get_config()
  c.model.enc_layers = 10
  c.model.dec_layers = 1
  return c
