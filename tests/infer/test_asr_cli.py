"""infer/asr.py: missing exports and unreadable, empty, wrong-rate or missing audio fail
with one ``error:`` line that says what to fix, and exit status 2 (no traceback)."""
import numpy as np
import pytest

from core import checkpoint
from data import audio as audio_lib
from infer import asr as infer_asr
from models import encdec, registry
from models.configs import EncDecConfig


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  cfg = EncDecConfig(d_model=16, n_heads=2, head_dim=8, enc_layers=1, dec_layers=1,
                     mlp_dim=32, subsampling_channels=4)
  _, params = encdec.init(cfg)
  path = tmp_path_factory.mktemp("asr") / "export"
  checkpoint.save_export(path, params, model=registry.to_dict(encdec, cfg), dtype="float32",
                         extra={"tokenizer": "byte"})
  return str(path)


def test_cli_reports_a_missing_export(tmp_path, capsys):
  audio_lib.write_wav(str(tmp_path / "a.wav"), np.ones(1600, np.int16))
  assert infer_asr.main(["--checkpoint", str(tmp_path / "nope"), str(tmp_path / "a.wav")]) == 2
  assert capsys.readouterr().err.startswith("error: ")


def test_cli_rejects_bad_audio(export, tmp_path, capsys):
  empty, rate, text = tmp_path / "empty.wav", tmp_path / "8k.wav", tmp_path / "a.wav"
  audio_lib.write_wav(str(empty), np.zeros(0, np.int16))
  audio_lib.write_wav(str(rate), np.ones(800, np.int16), 8_000)
  text.write_text("not audio")
  for path, message in ((empty, "no audio samples"), (rate, "expected 16000 Hz"),
                        (text, "not a readable WAV"), (tmp_path / "missing.wav", "not exist")):
    assert infer_asr.main(["--checkpoint", export, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_transcribes_a_good_file_with_rtfx(export, tmp_path, capsys):
  audio_lib.write_wav(str(tmp_path / "a.wav"), (np.arange(8000) % 64 - 32).astype(np.int16))
  assert infer_asr.main(["--checkpoint", export, str(tmp_path / "a.wav"),
                         "--max-tokens", "4"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith(str(tmp_path / "a.wav") + "\t") and out[1].startswith("RTFx ")
