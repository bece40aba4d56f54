"""The small language-model run the train tests share, on a 40-file slice of the corpus."""
import pytest

from configs import lm_tiny
from data import stdlib_corpus

MAX_FILES = 40


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  stdlib_corpus.load_builder(str(d), max_files=MAX_FILES)
  return str(d)


def small_config(data_dir, **train_overrides):
  c = lm_tiny.get_config()
  c.model.n_layers = 1
  c.model.mlp_dim = 256
  c.data.seq_len = 32
  c.data.data_dir = data_dir
  c.data.max_files = MAX_FILES
  c.train.global_batch_size = 8
  c.train.steps = 6
  c.train.log_every = 1
  c.train.eval_every = 6
  c.train.eval_batches = 2
  c.train.checkpoint_every = 3
  c.optim.warmup_steps = 2
  for k, v in train_overrides.items():
    setattr(c.train, k, v)
  return c


