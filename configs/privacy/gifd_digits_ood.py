"""gifd_digits_ood: the out-of-distribution case, the prior trained on digits 0-4 only and the
private batches drawn from digits 5-9.

  python -m privacy.main --config configs/privacy/gifd_digits_ood.py --workdir workdirs/gifd_ood
"""
from configs import common


def get_config():
  c = common.privacy_config()
  c.prior.classes = (0, 1, 2, 3, 4)
  c.private_classes = (5, 6, 7, 8, 9)
  return c
