"""digits_cnn: a small convnet classifying scikit-learn's bundled 8x8 handwritten digits
(task ``classify``): the loop's second task, a CPU run of seconds.

  python train/main.py --config configs/digits_cnn.py --workdir workdirs/digits
"""
import ml_collections

from configs import common
from data import defaults as data_defaults
from models import configs as model_configs


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classify"
  c.model = {"name": "convnet", **model_configs.ConvNetConfig().to_dict()}
  c.data = data_defaults.digits_config()
  c.train = common.train_config()
  c.train.steps = 300
  c.train.global_batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.eval_batches = -1
  c.train.checkpoint_every = 100
  c.optim = common.optim_config()
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 1e-4
  c.mesh = common.mesh_config()
  return c
