"""quant/main.py end to end on a tiny export: round trip, kernel path == dense path, errors."""
import json
import math

import chex
import jax
import numpy as np
import pytest

from core import checkpoint as ckpt_lib
from core import qtensor
from models import registry
from models import transformer as T
from quant import calibration, ptq
from quant import main as qmain
from tests import snapshot

CFG = T.ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=32, mlp_dim=128)
SMALL = ["--calib-samples", "4", "--calib-seq-len", "32", "--chunk", "4", "--no-progress"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  path = tmp_path_factory.mktemp("src") / "export"
  _, params = T.init(CFG, seed=1)
  ckpt_lib.save_export(path, params, model=registry.to_dict(T, CFG), dtype="float32",
                       extra={"tokenizer": "byte"})
  return path, params


def _leaves(tree):
  return jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda v: isinstance(v, qtensor.QuantizedWeight))[0]


def test_end_to_end_round_trip_and_kernel_path(source, tmp_path):
  src, params = source
  out = tmp_path / "q"
  res = qmain.run(qmain.parse_args(
      ["--checkpoint", str(src), "--method", "gptq", "--dim", "ada", "--bits", "4",
       "--group", "32", "--out", str(out), "--eval", "--eval-batches", "2",
       "--eval-batch-size", "4"] + SMALL))
  meta, loaded = ckpt_lib.load_export(out, T.abstract_params(CFG)[1])
  # Exact round trip: same tree, same QuantizedWeight metadata, bit-identical arrays.
  want, got = _leaves(res["qparams"]), _leaves(loaded)
  assert [p for p, _ in want] == [p for p, _ in got]
  for (path, a), (_, b) in zip(want, got):
    if isinstance(a, qtensor.QuantizedWeight):
      assert isinstance(b, qtensor.QuantizedWeight), path
      assert (a.bits, a.group_size, a.dim, a.shape, a.dtype) == \
          (b.bits, b.group_size, b.dim, b.shape, b.dtype)
      for f in ("packed", "scales", "zeros", "perm"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None)
        if x is not None:
          assert x.dtype == y.dtype
          np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_array_equal(a, b)
  n_linear = CFG.n_layers * 7  # q, k, v, o, gate, up, down
  assert sum(isinstance(v, qtensor.QuantizedWeight) for _, v in got) == n_linear
  q = meta["quantization"]
  assert (q["method"], q["bits"], q["group_size"], q["dim"]) == ("gptq", 4, 32, "ada")
  assert [r["dim"] for r in q["linears"]] == [r["dim"] for r in res["records"]]
  assert meta["tokenizer"] == "byte" and registry.from_dict(meta["model"]) == (T, CFG)
  # Perplexity through the low-bit kernel path == the dequantized dense params'.
  batches = qmain.eval_batches(calibration.data_config("byte"), split="validation",
                               seq_len=32, batch_size=4, num_batches=2)
  token_bytes = qmain.token_bytes_for("byte", CFG.vocab_size)
  graphdef, _ = T.abstract_params(CFG)
  dense, = qmain.evaluate(graphdef, [ptq.dequantized(loaded)], batches, token_bytes)
  kernel = res["eval"]["quantized"]
  np.testing.assert_allclose(kernel["perplexity"], dense["perplexity"], rtol=1e-5)
  np.testing.assert_allclose(kernel["bits_per_byte"], dense["bits_per_byte"], rtol=1e-5)
  fp = res["eval"]["fp"]
  assert fp["perplexity"] != kernel["perplexity"]
  assert math.isclose(fp["perplexity"], math.exp(fp["loss"]), rel_tol=1e-9)
  # The source export is untouched.
  _, src_params = ckpt_lib.load_export(src, T.abstract_params(CFG)[1])
  chex.assert_trees_all_equal(src_params, params)


def test_failures_leave_no_export(source, tmp_path, monkeypatch):
  src, _ = source
  out = tmp_path / "q"
  args = ["--checkpoint", str(src), "--method", "rtn", "--dim", "oc", "--bits", "3",
          "--group", "32", "--out", str(out)] + SMALL
  calls = []

  def failing_quantize_linear(*a, **k):
    calls.append(1)
    if len(calls) == 9:  # the second block's k_proj
      raise RuntimeError("simulated failure in the middle of the model")
    return real(*a, **k)

  real = ptq.quantize_linear
  monkeypatch.setattr(ptq, "quantize_linear", failing_quantize_linear)
  with pytest.raises(RuntimeError, match="simulated"):
    qmain.run(qmain.parse_args(args))
  assert not out.exists()
  monkeypatch.setattr(ptq, "quantize_linear", real)

  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  real_save = ocp.StandardCheckpointer.save

  def failing_save(self, *a, **k):  # the params are written, then the disk fails
    real_save(self, *a, **k)
    self.wait_until_finished()
    raise OSError("simulated disk failure while writing")
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", failing_save)
  with pytest.raises(OSError, match="simulated disk"):
    qmain.run(qmain.parse_args(args))
  assert not out.exists()
  assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either


def test_bad_inputs(source, tmp_path, capsys):
  src, _ = source
  base = ["--method", "rtn", "--dim", "oc", "--group", "32", "--out", str(tmp_path / "q")]
  with pytest.raises(ValueError, match="not an effijax export"):
    qmain.run(qmain.parse_args(["--checkpoint", str(tmp_path)] + base))
  other = tmp_path / "other"
  other.mkdir()
  (other / "export.json").write_text(json.dumps(
      {"format": ckpt_lib.EXPORT_FORMAT, "version": 1, "dtype": "float32",
       "model": {"hidden_size": 64, "architecture": "bert"}}))
  with pytest.raises(ValueError, match="not an export of an effijax transformer"):
    qmain.run(qmain.parse_args(["--checkpoint", str(other)] + base))
  with pytest.raises(ValueError, match="bits=5 is not supported"):
    qmain.run(qmain.parse_args(["--checkpoint", str(src), "--bits", "5"] + base))
  with pytest.raises(ValueError, match=r"layers\.0\.attn\.k_proj .*group_size=48"):
    qmain.run(qmain.parse_args(["--checkpoint", str(src)] + base[:-4] +
                               ["--group", "48", "--out", str(tmp_path / "q")]))
  with pytest.raises(ValueError, match="empty|cannot be used"):
    calibration.calibration_batch(calibration.data_config("byte"), num_samples=2, seq_len=8,
                                  split="train[:0]")
  with pytest.raises(ValueError, match="num_samples=0"):
    calibration.calibration_batch(calibration.data_config("byte"), num_samples=0, seq_len=8)
  # The CLI prints the error and exits with status 2.
  assert qmain.main(["--checkpoint", str(tmp_path / "missing")] + base) == 2
  assert "is not a directory" in capsys.readouterr().err
  assert not (tmp_path / "q").exists()


def test_out_never_destroys_anything(source, tmp_path, capsys):
  """--out refuses the source, a parent of the source, a training workdir, a non-empty
  directory and an export of another kind; a quantized export is replaced only with
  --overwrite. Every refusal exits 2 with one error line and leaves the bytes on disk as they
  were."""
  src, _ = source
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  (workdir / "checkpoints" / "10" / "state").write_text("weights")
  (workdir / "config.json").write_text("{}")
  (workdir / "metrics.jsonl").write_text('{"step": 10}\n')
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "todo.txt").write_text("keep me")
  base = ["--checkpoint", str(src), "--method", "rtn", "--dim", "oc", "--group", "32"] + SMALL
  cases = [(src, "is the source"), (src.parent, "contains the source"),
           (workdir, "is a training workdir"), (notes, "non-empty directory"),
           (notes / "todo.txt", "is a file")]
  for out, why in cases:
    before = snapshot.digest(tmp_path), snapshot.digest(src.parent)
    assert qmain.main(base + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and why in err[0], err
    assert (snapshot.digest(tmp_path), snapshot.digest(src.parent)) == before, out

  # A quantized export: refused without --overwrite, replaced with it.
  out = tmp_path / "q"
  assert qmain.main(base + ["--out", str(out)]) == 0
  first = snapshot.digest(out)
  assert qmain.main(base + ["--out", str(out)]) == 2
  assert "already holds a quantized export" in capsys.readouterr().err
  assert snapshot.digest(out) == first
  assert qmain.main(base + ["--bits", "8", "--out", str(out), "--overwrite"]) == 0
  assert ckpt_lib.read_export_metadata(out)["quantization"]["bits"] == 8
  # A dense export is never replaced by a quantized one, even with --overwrite.
  before = snapshot.digest(src)
  assert qmain.main(base + ["--out", str(src), "--overwrite"]) == 2
  assert snapshot.digest(src) == before
  dense_copy = tmp_path / "dense"
  ckpt_lib.save_export(dense_copy, ckpt_lib.load_export(src)[1], model={"name": "transformer"},
                       dtype="float32")
  before = snapshot.digest(dense_copy)
  assert qmain.main(base + ["--out", str(dense_copy), "--overwrite"]) == 2
  assert "holds a dense export" in capsys.readouterr().err
  assert snapshot.digest(dense_copy) == before
