"""lm_tiny_lora: lm_tiny's decoder with a frozen base and rank-8 LoRA on q and v
(models/lora.py); only the PEFT part trains (optim.trainable). A fresh base is a random one:
this config checks the PEFT path end to end, it is not a pretrained model's fine-tune.

  python train/main.py --config configs/lm_tiny_lora.py --workdir workdirs/lm_tiny_lora
"""
from configs import common
from models import configs as model_configs


def get_config():
  c = common.base_config(size="tiny")
  tiny = model_configs.preset("tiny").to_dict()
  c.model = {"name": "lora", **model_configs.PeftConfig(**tiny).to_dict()}
  c.data.seq_len = 256
  c.train.steps = 100
  c.train.global_batch_size = 16
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.checkpoint_every = 100
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  c.optim.trainable = "^peft/"
  return c
