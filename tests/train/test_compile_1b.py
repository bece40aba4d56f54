"""Scale on paper: the lm_1b train step compiles with FSDP over the 8 devices."""
import pytest

from configs import lm_1b
from core import sharding
from train import loop


@pytest.mark.slow
def test_lm_1b_train_step_compiles_with_fsdp_over_8_devices():
  c = lm_1b.get_config()
  c.train.global_batch_size = 8
  c.data.seq_len = 512
  mesh = sharding.make_mesh(c.mesh)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  out = loop.compile_only(c, mesh)
  print(out)
  assert out["num_params"] > 1.2e9
  # Params (f32) + Adam moments sharded 8 ways: ~3 x 4.9 GB / 8 per device, not 15 GB.
  assert out["argument_size_in_bytes"] < 3 * 4 * out["num_params"] / 8 * 1.1
  assert out["per_device_total_bytes"] > out["argument_size_in_bytes"]
