"""infer/main.py's user errors: one `error:` line naming the file or request, exit 2."""
import pytest
from absl import flags

from core import checkpoint, cli
from models import registry
from models import transformer as T

CFG = T.preset("tiny", n_layers=1, vocab_size=384, d_model=32, n_heads=4, n_kv_heads=2,
               head_dim=8, mlp_dim=64)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  _, params = T.init(CFG, seed=0)
  path = tmp_path_factory.mktemp("cli") / "export"
  checkpoint.save_export(path, params, model=registry.to_dict(T, CFG), dtype="float32",
                         extra={"tokenizer": "byte"})
  return path


def _run(argv, capsys):
  from infer import main as main_mod  # defines the flags on first import
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.run(main_mod.main, ["infer/main.py"] + argv)
  finally:
    flags.FLAGS.unparse_flags()
  out = capsys.readouterr()
  return exit_info.value.code, out.out, out.err.strip().splitlines()


def test_user_errors(export, tmp_path, capsys):
  good = tmp_path / "prompts.txt"
  good.write_text("hello\n")
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("caf\xe9\n".encode("latin-1"))
  blank = tmp_path / "blank.txt"
  blank.write_text("\n   \n")
  long = tmp_path / "long.txt"
  long.write_text("x" * 100 + "\n")
  cases = [
      (["--checkpoint", str(tmp_path / "nope"), "--prompt-file", str(good)],
       f"error: {tmp_path / 'nope'} is not a directory"),
      (["--checkpoint", str(export), "--prompt-file", str(tmp_path / "missing.txt")],
       f"error: prompt file {tmp_path / 'missing.txt'} does not exist"),
      (["--checkpoint", str(export), "--prompt-file", str(latin1)],
       f"error: prompt file {latin1} is not UTF-8 text (byte 3"),
      (["--checkpoint", str(export), "--prompt-file", str(blank)],
       f"error: prompt file {blank} has no prompts"),
      (["--checkpoint", str(export), "--prompt-file", str(good), "--shared-prefix-file",
        str(tmp_path / "sys.txt")],
       f"error: shared prefix file {tmp_path / 'sys.txt'} does not exist"),
      (["--checkpoint", str(export), "--prompt-file", str(long), "--max-len", "64"],
       "error: prompt 0 needs 165 positions"),
      (["--checkpoint", str(export), "--prompt-file", str(good), "--temperature", "-1"],
       "error: temperature must be a finite number >= 0"),
      (["--prompt-file", str(good)], "error: flag --checkpoint=None"),
  ]
  for argv, first in cases:
    code, _, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(first), (argv, err)


def test_prompts_are_verbatim_unless_escapes(tmp_path):
  from infer import engine  # pylint: disable=g-import-not-at-top
  f = tmp_path / "p.txt"
  f.write_text('print("a\\nb")\n')
  assert engine.read_prompts(f) == ['print("a\\nb")']
  assert engine.read_prompts(f, escapes=True) == ['print("a\nb")']
