r"""A verifiable arithmetic task for RL on the CPU: multi-digit addition and multiplication with
an optional scratchpad, so answers have variable lengths (the long tail that makes synchronous
RL wait for its slowest generation; AReaL, arXiv:2505.24298 §3).

A problem is ``a <op> b`` with ``op`` in ``+ *``. The prompt is ``"a+b="``; a completion is the
optional scratchpad, then ``#### `` and the answer::

    57+68=  ->  "#### 125"
            or  "7+8=15 c1; 5+6+1=12 c1 #### 125"                  (scratchpad: column sums)
    123*45= ->  "123*5=615; 123*40=4920; 615+4920=5535 #### 5535"  (scratchpad: partial products)

The verifier is exact match on the text after the last ``####`` (the whole completion if there is
none) with every whitespace character removed, so ``"#### 1 25\n"`` counts as 125 but ``"0125"``,
``"125.0"`` and a missing answer do not. Reward 1.0 or 0.0.

Task files hold one problem per line, ``A + B = C`` (spaces optional); blank lines and ``#``
comments are skipped; a malformed line or a wrong ``C`` is an error naming the line.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

OPS = ("+", "*")
_LINE = re.compile(r"^\s*(\d+)\s*([+*])\s*(\d+)\s*=\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Problem:
  a: int
  op: str
  b: int

  @property
  def prompt(self) -> str:
    return f"{self.a}{self.op}{self.b}="

  @property
  def answer(self) -> str:
    return str(self.a + self.b if self.op == "+" else self.a * self.b)

  def scratchpad(self) -> str:
    """Worked steps: column sums with carries (+) or partial products and their sum (*)."""
    if self.op == "+":
      da, db = str(self.a)[::-1], str(self.b)[::-1]
      steps, carry = [], 0
      for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry = s // 10
        steps.append(f"{terms}={s} c{carry}")
      return "; ".join(steps)
    digits = str(self.b)[::-1]
    partials = [self.a * int(d) * 10 ** i for i, d in enumerate(digits)]
    steps = [f"{self.a}*{int(d) * 10 ** i}={p}" for i, (d, p) in enumerate(zip(digits, partials))]
    if len(partials) > 1:
      steps.append("+".join(map(str, partials)) + f"={sum(partials)}")
    return "; ".join(steps)

  def completion(self, scratchpad: bool = False) -> str:
    """The reference completion (the SFT target)."""
    return (self.scratchpad() + " " if scratchpad else "") + "#### " + self.answer


def generate(n: int, *, seed: int, ops: tuple[str, ...] = OPS, min_digits: int = 1,
             max_digits: int = 3) -> list[Problem]:
  """``n`` problems; each operand has a uniformly drawn number of digits in
  ``[min_digits, max_digits]`` (no leading zeros), so answer lengths vary. Same seed, same list."""
  if n < 0:
    raise ValueError(f"n={n} must be >= 0.")
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f"need 1 <= min_digits <= max_digits; got {min_digits}, {max_digits}.")
  bad = [op for op in ops if op not in OPS]
  if bad or not ops:
    raise ValueError(f"ops={ops!r}: choose from {OPS}.")
  rng = np.random.default_rng(seed)

  def operand():
    d = int(rng.integers(min_digits, max_digits + 1))
    return int(rng.integers(10 ** (d - 1) if d > 1 else 0, 10 ** d))

  return [Problem(operand(), ops[int(rng.integers(len(ops)))], operand()) for _ in range(n)]


def extract_answer(completion: str) -> str:
  """The text after the last ``####`` (all of it if none), with all whitespace removed."""
  tail = completion.rsplit("####", 1)[-1]
  return "".join(tail.split())


def reward(problem: Problem, completion: str) -> float:
  """1.0 if the completion's answer equals the problem's exactly (whitespace ignored), else 0."""
  return float(extract_answer(completion) == problem.answer)


def parse_lines(lines, source: str = "<lines>") -> list[Problem]:
  """Problems from ``A + B = C`` lines; ValueError naming the first bad line."""
  problems = []
  for number, line in enumerate(lines, start=1):
    text = line.split("#", 1)[0].strip()
    if not text:
      continue
    m = _LINE.match(text)
    if m is None:
      raise ValueError(f"{source}:{number}: cannot parse {line.rstrip()!r}; expected "
                       "'A + B = C' or 'A * B = C' with non-negative integers.")
    p = Problem(int(m.group(1)), m.group(2), int(m.group(3)))
    if int(m.group(4)) != int(p.answer):
      raise ValueError(f"{source}:{number}: {line.strip()!r} is wrong: "
                       f"{p.a} {p.op} {p.b} = {p.answer}.")
    problems.append(p)
  return problems


def load(path: str | os.PathLike) -> list[Problem]:
  """Reads a task file (see the module docstring)."""
  with open(path, encoding="utf-8") as f:
    return parse_lines(f, str(path))


def save(path: str | os.PathLike, problems, *, overwrite: bool = False) -> None:
  """Writes problems as ``A + B = C`` lines; an existing file is kept unless ``overwrite``."""
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
  with open(path, "w", encoding="utf-8") as f:
    for p in problems:
      f.write(f"{p.a} {p.op} {p.b} = {p.answer}\n")
