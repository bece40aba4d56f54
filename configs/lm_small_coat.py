"""lm_small_coat: lm_small trained the COAT way: FP8 E4M3 optimizer moments with dynamic range
expansion (``coat_adamw``, optim/coat.py) and activations kept in FP8 for the backward pass
(``model.fp8_activations``, models/fp8_act.py).

  python train/main.py --config configs/lm_small_coat.py --workdir workdirs/lm_small_coat
"""
from configs import lm_small


def get_config():
  c = lm_small.get_config()
  c.optim.name = "coat_adamw"
  c.model.fp8_activations = True
  return c
