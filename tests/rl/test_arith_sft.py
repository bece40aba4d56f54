"""rl.tasks.arith_sft: the SFT text is exactly what RL prompts and rewards, never one of the
held-out problems that configs/rl_arith.py evaluates on, and the dataset is kept unless
--overwrite."""
import pytest

from configs import rl_arith
from rl import trainer
from rl.tasks import arith, arith_sft


def test_sft_examples_are_rewarded_completions_without_rl_arith_held_out_problems(tmp_path):
  builder = arith_sft.prepare(tmp_path, train=300, validation=40)  # the defaults of rl_arith
  _, held_out = trainer.load_problems(rl_arith.get_config().rl)
  held_out = {p.prompt for p in held_out}
  assert len(held_out) > 400
  longest = 0
  for split in ("train", "validation"):
    texts = [r["text"].decode() for r in builder.as_data_source(split=split)]
    assert texts
    for text in texts:
      prompt, completion = text.split("=", 1)
      a, b = map(int, prompt.split("+"))
      assert arith.reward(arith.Problem(a, "+", b), completion) == 1.0
      assert completion.index("####") > 0  # the scratchpad comes first
      assert prompt + "=" not in held_out
      longest = max(longest, len(completion))
  assert longest + 1 <= rl_arith.get_config().rl.max_new_tokens  # + the stop token


def test_answer_only_data_and_kept_dataset(tmp_path):
  builder = arith_sft.prepare(tmp_path, train=50, validation=10, scratchpad=False)
  texts = [r["text"].decode() for r in builder.as_data_source(split="train")]
  assert all(t.split("=", 1)[1].startswith("#### ") for t in texts)
  assert arith_sft.prepare(tmp_path, train=10, scratchpad=False).info.splits[
      "train"].num_examples > 10  # kept
  with pytest.raises(ValueError, match="would be empty"):
    arith_sft.prepare(tmp_path / "empty", train=5, validation=5, seed=1, eval_problems=5,
                      eval_seed=1, max_digits=2)
