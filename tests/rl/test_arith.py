"""rl/tasks/arith.py: generator, verifier and task files."""
import numpy as np
import pytest

from rl.tasks import arith


def test_generator_is_seeded_correct_and_varied():
  a = arith.generate(300, seed=1, max_digits=4)
  assert a == arith.generate(300, seed=1, max_digits=4)
  assert a != arith.generate(300, seed=2, max_digits=4)
  for p in a:
    want = p.a + p.b if p.op == "+" else p.a * p.b
    assert p.answer == str(want)
    assert p.prompt == f"{p.a}{p.op}{p.b}="
  assert {p.op for p in a} == {"+", "*"}
  assert len({len(p.answer) for p in a}) >= 5  # variable-length answers
  assert max(len(str(x)) for p in a for x in (p.a, p.b)) == 4


def test_reference_completions_verify_and_scratchpads_are_longer():
  problems = arith.generate(200, seed=3, max_digits=3)
  lengths = []
  for p in problems:
    assert arith.reward(p, p.completion()) == 1.0
    assert arith.reward(p, p.completion(scratchpad=True)) == 1.0
    lengths.append(len(p.completion(scratchpad=True)))
  assert np.std(lengths) > 5 and min(lengths) > len("#### 0")


def test_scratchpad_contents():
  assert arith.Problem(57, "+", 68).completion(True) == "7+8=15 c1; 5+6+1=12 c1 #### 125"
  assert (arith.Problem(123, "*", 45).completion(True)
          == "123*5=615; 123*40=4920; 615+4920=5535 #### 5535")


def test_verifier_exact_match_robust_to_whitespace():
  p = arith.Problem(57, "+", 68)
  for good in ["#### 125", "####125", "  #### 1 25\n", "7+8=15 #### 999 #### 125", "125", " 12 5 "]:
    assert arith.reward(p, good) == 1.0, good
  for bad in ["#### 0125", "#### 125.0", "#### 124", "", "####", "125 ####", "#### 125!"]:
    assert arith.reward(p, bad) == 0.0, bad


def test_task_file_round_trip_and_no_overwrite(tmp_path):
  problems = arith.generate(20, seed=0)
  path = tmp_path / "task.txt"
  arith.save(path, problems)
  assert arith.load(path) == problems
  with pytest.raises(FileExistsError, match="pass overwrite=True"):
    arith.save(path, problems[:2])
  assert arith.load(path) == problems  # untouched
  arith.save(path, problems[:2], overwrite=True)
  assert arith.load(path) == problems[:2]


def test_malformed_task_lines_name_the_line(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_text("# header\n1 + 2 = 3\n\n12*3=36  # inline comment\n7 - 2 = 5\n")
  with pytest.raises(ValueError, match=r"bad.txt:5: cannot parse '7 - 2 = 5'"):
    arith.load(path)
  path.write_text("1 + 2 = 3\n4 * 5 = 21\n")
  with pytest.raises(ValueError, match=r"bad.txt:2: '4 \* 5 = 21' is wrong: 4 \* 5 = 20"):
    arith.load(path)
  assert arith.parse_lines(["# c", "1 + 2 = 3", "12*3=36  # ok"]) == [
      arith.Problem(1, "+", 2), arith.Problem(12, "*", 3)]


def test_generator_bad_arguments():
  with pytest.raises(ValueError, match="choose from"):
    arith.generate(3, seed=0, ops=("-",))
  with pytest.raises(ValueError, match="min_digits <= max_digits"):
    arith.generate(3, seed=0, min_digits=3, max_digits=2)
