"""lm_7b: Llama-2-7B-shaped model (6.7B params) for TPU pods / multi-GPU hosts.

  python train/main.py --config configs/lm_7b.py --workdir gs://.../lm_7b --distributed
FSDP over all devices; add --config.mesh.tensor=4 (and fsdp=-1) on large slices.
"""
from configs import common


def get_config():
  c = common.base_config(size="7b")
  c.data.seq_len = 4096
  c.train.steps = 250_000
  c.train.global_batch_size = 1024
  c.train.log_every = 10
  c.train.eval_every = 5000
  c.train.eval_batches = 50
  c.train.checkpoint_every = 1000
  c.train.export_dtype = "bfloat16"
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 2000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
