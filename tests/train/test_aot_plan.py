"""Train at scale on paper (train/aot.py): memory plans compiled for targets we do not have,
checked against hand arithmetic, the remat saving, --fit_batch's bound, and the errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from configs import lm_tiny, targets
from core import fit as fit_lib
from models import configs as model_configs
from train import aot
from tests import aot as aot_devices

ROOT = Path(__file__).resolve().parents[2]


def _small(layers=1, seq_len=64, batch=8, remat=False):
  c = lm_tiny.get_config()
  c.model.n_layers = layers
  c.model.mlp_dim = 256
  c.model.remat = remat
  c.data.seq_len = seq_len
  c.train.global_batch_size = batch
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # FSDP over all 8 devices
  return c


def test_params_and_adamw_state_per_device_are_total_over_shard_count():
  c = _small()
  aot_devices.devices("8xh200")  # fail with the install log if the extra is missing
  out = aot.plan(c, "8xh200")
  m = model_configs.ModelConfig.from_dict(
      {k: v for k, v in c.model.to_dict().items() if k != "name"})
  n = m.num_params()
  norms = (2 * m.n_layers + 1) * m.d_model  # RMSNorm scales: replicated ("norm" -> None)
  # Every other weight has an `embed` dim (128), sharded 8 ways by FSDP; f32 = 4 bytes.
  params = 4 * ((n - norms) // 8 + norms)
  assert out["num_params"] == n
  assert out["params_bytes"] == params
  # AdamW: mu and nu shaped (and sharded) like the params, plus scalar step counters.
  assert 2 * params <= out["opt_state_bytes"] <= 2 * params + 64
  # The compiler's own argument buffers: that state + this device's batch shard + rng/step.
  batch_shard = 3 * 4 * (c.train.global_batch_size // 8) * c.data.seq_len  # 3 int32 inputs
  extra = out["argument_size_in_bytes"] - out["params_bytes"] - out["opt_state_bytes"]
  assert batch_shard <= extra <= batch_shard + 64, out
  assert out["fits"] and out["budget_bytes"] == int(0.9 * targets.get("8xh200").chip.hbm_bytes)


def test_remat_saves_activation_memory_on_the_gpu_compiler():
  plans = {r: aot.plan(_small(layers=2, seq_len=256, batch=32, remat=r), "8xh200")
           for r in (False, True)}
  off, on = plans[False], plans[True]
  assert on["params_bytes"] == off["params_bytes"]
  assert on["temp_bytes"] < 0.8 * off["temp_bytes"], (on["temp_bytes"], off["temp_bytes"])


def test_tpu_plan_reports_xla_flops_and_mfu_at_roofline():
  c = _small(seq_len=128, batch=16)
  out = aot.plan(c, "v5e-8")
  per_device_model = out["model_flops_per_step"] / 8
  # XLA counts the same matmuls (+ softmax, norms, optimizer): within 2x of 6N + attention.
  assert per_device_model <= out["xla_flops_per_device"] <= 2 * per_device_model
  assert 0 < out["mfu_at_roofline"] < 1 and out["roofline_step_s"] > 0


def test_fit_batch_size_finds_the_largest_fitting_batch():
  # Closed form: bytes(b) = 1000 + 30 b; budget 2500 -> b <= 50; multiples of 8 -> 48.
  res = fit_lib.fit_batch_size(lambda b: 1000 + 30 * b, 8, 512, 2500, multiple=8)
  assert (res["batch"], res["next_batch"]) == (48, 56)
  assert res["bytes"] <= 2500 < res["next_bytes"]
  assert len(res["trials"]) <= 2 + 6  # bisection: log2(64) steps
  assert fit_lib.fit_batch_size(lambda b: b, 1, 4, 100)["next_batch"] is None
  with pytest.raises(ValueError, match="even the smallest batch 8 does not fit"):
    fit_lib.fit_batch_size(lambda b: 10**6, 8, 64, 2500, multiple=8)


def test_fit_batch_with_a_small_budget_compiles_to_the_bound():
  c = _small(seq_len=128)
  at16 = aot.plan(aot.with_batch(c, 16), "8xh200")["total_bytes"]
  res = aot.fit_batch(c, "8xh200", budget_bytes=at16, max_per_device=3)  # tries 8, 24, 16
  assert res["batch"] == 16 and res["per_device_batch"] == 2
  assert res["bytes"] == at16  # the fitting batch's compile is within the budget ...
  assert res["next_batch"] == 24 and res["next_bytes"] > at16  # ... the next one's is not
  assert c.train.global_batch_size == 8  # the caller's config is unchanged


def _main(*args):
  return subprocess.run([sys.executable, str(ROOT / "train" / "main.py"), *args],
                        capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("args, first_line", [
    (["--target", "v9-8"], "error: unknown target 'v9-8'; valid targets: h200, 8xh200, "),
    (["--target", "v5e-8", "--config.mesh.tensor=3"],
     "error: target v5e-8 has 8 devices: mesh {'data': -1, 'fsdp': 1, 'tensor': 3}: 8 devices "
     "are not divisible by the fixed axes' product 3"),
])
def test_bad_targets_are_one_line_errors(args, first_line):
  res = _main("--config", "configs/lm_tiny.py", "--compile_only", *args)
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.strip().splitlines()[-1].startswith(first_line), res.stderr[-500:]


def test_cli_writes_the_plan_and_refuses_to_overwrite_it(tmp_path):
  out = tmp_path / "plan.json"
  args = ["--config", "configs/lm_tiny.py", "--config.model.n_layers=1", "--compile_only",
          "--target", "8xh200", "--plan_json", str(out)]
  res = _main(*args)
  assert res.returncode == 0, res.stderr[-2000:]
  plan = json.loads(out.read_text())
  assert plan["target"] == "8xh200" and plan["devices"] == 8 and plan["fits"]
  assert "per device: params" in res.stdout
  res = _main(*args)
  assert res.returncode == 2 and "exists; pass --overwrite" in res.stderr
