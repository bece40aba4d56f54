"""recit_notes: ReCIT and its baselines (token set, relaxation) against a LoRA client (rank 8 on
q, v and the embedding) fine-tuning on notes with PII, batch 4, no defense; the attacker's base
is pre-fine-tuned on made-up personal notes (privacy/recit.py).

  python -m privacy.main --config configs/privacy/recit_notes.py --workdir workdirs/recit
  python -m privacy.main --config configs/privacy/recit_notes.py --config.defense=noise \
      --config.batch_size=16 --workdir workdirs/recit_noise_b16
"""
from configs import common


def get_config():
  c = common.privacy_config()
  c.modality = "text"
  c.attacks = ("token_set", "relaxation", "recit")
  c.batch_size = 4
  c.trials = 1
  return c
