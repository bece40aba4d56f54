"""`arith_sft`: supervised warm-start text for RL on :mod:`rl.tasks.arith`, as a local TFDS
dataset that ``train/main.py`` trains on like any other text dataset (task ``lm``).

Each example is one problem and its reference completion, exactly as RL will see them: the
prompt ``"57+68="`` followed by the scratchpad and ``"#### 125"`` (``--no-scratchpad``: the
answer alone); the LM pipeline adds BOS/EOS, so the model learns to stop where the RL rollout
stops. Problems that RL holds out for evaluation (``arith.generate(eval_problems,
seed=eval_seed)`` with the same digits and operators) are never written, so held-out accuracy
after SFT and after RL measures generalisation. Digits, operators and the held-out set default
to ``configs/rl_arith.py``'s (:data:`DEFAULTS`), so the two agree unless both are changed.

  python -m rl.tasks.arith_sft --data_dir workdirs/arith_data
  python train/main.py --config configs/sft_arith.py --workdir workdirs/sft_arith \\
      --config.data.data_dir=workdirs/arith_data

The dataset is prepared once per data_dir (ArrayRecord, TF-free); an existing one is kept
unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from configs import rl_arith
from rl.tasks import arith

NAME = "arith_sft"
VALIDATION_SEED_OFFSET = 7919


def _rl_defaults() -> dict:
  r = rl_arith.get_config().rl
  return dict(ops=str(r.ops), min_digits=int(r.min_digits), max_digits=int(r.max_digits),
              eval_problems=int(r.eval_problems), eval_seed=int(r.eval_seed), scratchpad=True)


# The task and held-out set of configs/rl_arith.py, and the scratchpad its rollouts expect.
DEFAULTS = _rl_defaults()


class ArithSft(tfds.core.GeneratorBasedBuilder):
  """Arithmetic problems with reference completions (features: text)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Problems and completions of rl/tasks/arith.py."}

  def __init__(self, *, train: int = 20000, validation: int = 500, seed: int = 0, **options):
    """``options``: ops, min_digits, max_digits, scratchpad, eval_problems, eval_seed
    (default :data:`DEFAULTS`), and TFDS builder arguments."""
    task = {k: options.pop(k, v) for k, v in DEFAULTS.items()}
    self.options = dict(train=train, validation=validation, seed=seed, **task)
    super().__init__(file_format="array_record", **options)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict(**self.options))

  def _split_generators(self, dl_manager):
    del dl_manager  # generated here, nothing to download
    return {"train": self._generate_examples("train"),
            "validation": self._generate_examples("validation")}

  def _generate_examples(self, split: str):
    o = self.options
    kw = dict(ops=tuple(o["ops"]), min_digits=o["min_digits"], max_digits=o["max_digits"])
    held_out = set(arith.generate(o["eval_problems"], seed=o["eval_seed"], **kw))
    # The validation stream has its own seed, away from small eval seeds.
    n, seed = ((o["train"], o["seed"]) if split == "train"
               else (o["validation"], o["seed"] + VALIDATION_SEED_OFFSET))
    problems = [p for p in arith.generate(n, seed=seed, **kw) if p not in held_out]
    if not problems:
      raise ValueError(f"the {split} split of {NAME} would be empty: all {n} generated problems "
                       "are RL's held-out ones; raise --train/--validation or change the seeds.")
    for i, p in enumerate(problems):
      yield i, {"text": p.prompt + p.completion(scratchpad=o["scratchpad"])}


def prepare(data_dir, *, overwrite: bool = False, **options) -> ArithSft:
  """Prepares the dataset in ``data_dir`` (kept if it exists, unless ``overwrite``)."""
  builder = ArithSft(data_dir=str(data_dir), **options)
  if builder.is_prepared():
    if not overwrite:
      return builder
    shutil.rmtree(builder.data_dir)
    builder = ArithSft(data_dir=str(data_dir), **options)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--data_dir", required=True, help="TFDS data_dir to prepare arith_sft in")
  ap.add_argument("--train", type=int, default=20000)
  ap.add_argument("--validation", type=int, default=500)
  ap.add_argument("--seed", type=int, default=0)
  d = DEFAULTS
  ap.add_argument("--ops", default=d["ops"], help="+ | * | +*")
  ap.add_argument("--min_digits", type=int, default=d["min_digits"])
  ap.add_argument("--max_digits", type=int, default=d["max_digits"])
  ap.add_argument("--scratchpad", action=argparse.BooleanOptionalAction, default=True,
                  help="write the worked steps before '#### answer'")
  ap.add_argument("--eval_problems", type=int, default=d["eval_problems"],
                  help="RL's held-out problems (rl.eval_problems), never written")
  ap.add_argument("--eval_seed", type=int, default=d["eval_seed"], help="rl.eval_seed")
  ap.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
  a = ap.parse_args(argv)
  opts = {k: v for k, v in vars(a).items() if k not in ("data_dir", "overwrite")}
  builder = prepare(Path(a.data_dir), overwrite=a.overwrite, **opts)
  print(f"{NAME} in {builder.data_dir}: "
        + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items()))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
