"""rl.tasks.arith_sft: the SFT text is exactly what RL prompts and rewards, never a held-out
problem, and the dataset is kept unless --overwrite."""
import pytest

from rl.tasks import arith, arith_sft


def test_sft_examples_are_rewarded_completions_without_held_out_problems(tmp_path):
  builder = arith_sft.prepare(tmp_path, train=300, validation=40, eval_problems=64)
  held_out = {p.prompt for p in arith.generate(64, seed=1, ops=("+",), max_digits=2)}
  for split in ("train", "validation"):
    texts = [r["text"].decode() for r in builder.as_data_source(split=split)]
    assert texts
    for text in texts:
      prompt, completion = text.split("=", 1)
      a, b = map(int, prompt.split("+"))
      assert arith.reward(arith.Problem(a, "+", b), completion) == 1.0
      assert prompt + "=" not in held_out
  assert arith_sft.prepare(tmp_path, train=10).info.splits["train"].num_examples > 10  # kept
  with pytest.raises(ValueError, match="would be empty"):
    arith_sft.prepare(tmp_path / "empty", train=5, validation=5, seed=1, eval_problems=5,
                      eval_seed=1)
