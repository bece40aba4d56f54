"""infer/asr.py: unreadable, empty, wrong-rate and missing audio fail with what to fix; the CLI
reports them as one line and exit status 2."""
import numpy as np
import pytest

from infer import asr as infer_asr


def test_read_wav_round_trip(tmp_path):
  audio = (np.arange(1600) % 200 - 100).astype(np.int16)
  infer_asr.write_wav(tmp_path / "a.wav", audio, 16_000)
  np.testing.assert_array_equal(infer_asr.read_wav(str(tmp_path / "a.wav"), 16_000), audio)


def test_transcribe_rejects_bad_audio(tmp_path):
  empty, rate, text = tmp_path / "empty.wav", tmp_path / "8k.wav", tmp_path / "a.wav"
  infer_asr.write_wav(empty, np.zeros(0, np.int16), 16_000)
  infer_asr.write_wav(rate, np.ones(800, np.int16), 8_000)
  text.write_text("not audio")
  for path, message in ((empty, "no audio samples"), (rate, "expects 16000 Hz"),
                        (text, "not a readable WAV"), (tmp_path / "missing.wav", "no such")):
    with pytest.raises(ValueError, match=message):
      infer_asr.read_wav(str(path), 16_000)


def test_cli_reports_a_missing_export(tmp_path, capsys):
  infer_asr.write_wav(tmp_path / "a.wav", np.ones(1600, np.int16), 16_000)
  assert infer_asr.main(["--checkpoint", str(tmp_path / "nope"), str(tmp_path / "a.wav")]) == 2
  assert capsys.readouterr().err.startswith("error: ")
