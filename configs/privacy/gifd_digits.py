"""gifd_digits: GIFD and its baselines (DLG, IG, latent search) against the convnet on 16x16
digits, batch 1, no defense; the DCGAN prior is trained on the disjoint prior split.

  python -m privacy.main --config configs/privacy/gifd_digits.py --workdir workdirs/gifd
  python -m privacy.main --config configs/privacy/gifd_digits.py --config.defense=noise \
      --config.batch_size=4 --workdir workdirs/gifd_noise_b4
"""
from configs import common


def get_config():
  return common.privacy_config()
