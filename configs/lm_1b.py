"""lm_1b: Llama-3.2-1B-shaped model (1.2B params with a 128K vocab) for accelerators.

  python train/main.py --config configs/lm_1b.py --workdir gs://.../lm_1b         # TPU/GPU
  python train/main.py --config configs/lm_1b.py --compile_only                   # memory plan
FSDP over all devices by default; set --config.mesh.tensor=N for tensor parallelism.
"""
from configs import common


def get_config():
  c = common.base_config(size="1b")
  c.data.seq_len = 2048
  c.train.steps = 100_000
  c.train.global_batch_size = 256
  c.train.log_every = 10
  c.train.eval_every = 2000
  c.train.eval_batches = 50
  c.train.checkpoint_every = 1000
  c.train.export_dtype = "bfloat16"
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 2000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
