"""data/audio.py: log-mel against a torch.stft reference, tone placement, padding invariance,
WAV reading with clear errors."""
import wave

import numpy as np
import pytest
import torch

from data import audio as audio_lib


def torch_reference(x: np.ndarray, n_mels=80, n_fft=512, win=400, hop=160, rate=16000):
  """Independent STFT (torch.stft, centred, zero padded, periodic Hann of 400 samples centred
  in 512), power, the same mel matrix, log with the same guard; float64 throughout."""
  spec = torch.stft(torch.tensor(x, dtype=torch.float64), n_fft=n_fft, hop_length=hop,
                    win_length=win, window=torch.hann_window(win, dtype=torch.float64),
                    center=True, pad_mode="constant", return_complex=True)
  power = (spec.abs() ** 2).numpy().transpose(0, 2, 1)  # [B, frames, bins]
  mel = power @ audio_lib.mel_filterbank(rate, n_fft, n_mels).astype(np.float64)
  return np.log(mel + audio_lib.LOG_GUARD)


def test_log_mel_matches_torch_stft_reference():
  rng = np.random.default_rng(0)
  x = (0.3 * rng.standard_normal((2, 4000))).astype(np.float32)
  got = np.asarray(audio_lib.log_mel(x))
  want = torch_reference(x)
  assert got.shape == want.shape == (2, audio_lib.num_frames(4000), 80)
  np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0, 6500.0])
def test_pure_tone_lands_in_nearest_mel_bin(freq):
  t = np.arange(8000) / 16000
  x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]
  feats = np.asarray(audio_lib.log_mel(x))[0, 5:-5]  # interior frames, away from the edges
  edges = audio_lib.mel_to_hz(np.linspace(0, audio_lib.hz_to_mel(8000), 82))
  nearest = int(np.argmin(np.abs(edges[1:-1] - freq)))
  assert int(np.argmax(feats.mean(axis=0))) == nearest


def test_filterbank_closed_form():
  fb = audio_lib.mel_filterbank(16000, 512, 80)
  assert fb.shape == (257, 80) and fb.min() >= 0 and fb.max() <= 1
  # Each triangle rises then falls: nonzero bins of a filter are contiguous.
  for m in range(80):
    nz = np.flatnonzero(fb[:, m])
    assert nz.size and (np.diff(nz) == 1).all()
  # Centres are equally spaced in HTK mel: mel(8000) / 81 apart.
  centres = audio_lib.mel_to_hz(np.linspace(0, audio_lib.hz_to_mel(8000), 82))[1:-1]
  np.testing.assert_allclose(np.diff(audio_lib.hz_to_mel(centres)),
                             audio_lib.hz_to_mel(8000) / 81, rtol=1e-9)


def test_zero_padding_leaves_each_examples_frames_unchanged():
  rng = np.random.default_rng(1)
  n = 3217
  x = (0.2 * rng.standard_normal(n)).astype(np.float32)
  alone = np.asarray(audio_lib.log_mel(x[None]))[0]
  padded = np.asarray(audio_lib.log_mel(np.pad(x, (0, 2000))[None]))[0]
  frames = int(audio_lib.num_frames(n))
  assert alone.shape[0] == frames
  np.testing.assert_allclose(padded[:frames], alone, atol=1e-4)


def test_log_mel_rejects_unbatched_audio():
  with pytest.raises(ValueError, match=r"\[batch, samples\]"):
    audio_lib.log_mel(np.zeros(1600, np.float32))


def test_wav_round_trip_and_no_overwrite(tmp_path):
  path = str(tmp_path / "a.wav")
  x = np.random.default_rng(2).integers(-30000, 30000, 1234).astype(np.int16)
  audio_lib.write_wav(path, x)
  got, rate = audio_lib.read_wav(path)
  assert rate == 16000 and got.dtype == np.int16
  np.testing.assert_array_equal(got, x)
  with pytest.raises(ValueError, match="overwrite=True"):
    audio_lib.write_wav(path, x)
  audio_lib.write_wav(path, x[:10], overwrite=True)
  assert audio_lib.read_wav(path)[0].size == 10


def _raw_wav(path, *, rate=16000, channels=1, width=2, frames=b"\0\0" * 10):
  with wave.open(str(path), "wb") as f:
    f.setnchannels(channels)
    f.setsampwidth(width)
    f.setframerate(rate)
    f.writeframes(frames)
  return str(path)


def test_read_wav_errors_say_what_was_found(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    audio_lib.read_wav(str(tmp_path / "missing.wav"))
  junk = tmp_path / "junk.wav"
  junk.write_text("not audio")
  with pytest.raises(ValueError, match="not a readable WAV"):
    audio_lib.read_wav(str(junk))
  with pytest.raises(ValueError, match="no audio samples"):
    audio_lib.read_wav(_raw_wav(tmp_path / "empty.wav", frames=b""))
  with pytest.raises(ValueError, match="8000 Hz; expected 16000 Hz"):
    audio_lib.read_wav(_raw_wav(tmp_path / "8k.wav", rate=8000))
  assert audio_lib.read_wav(_raw_wav(tmp_path / "8k_ok.wav", rate=8000),
                            expected_rate=None)[1] == 8000
  with pytest.raises(ValueError, match="2 channels; expected mono"):
    audio_lib.read_wav(_raw_wav(tmp_path / "stereo.wav", channels=2))
  with pytest.raises(ValueError, match="8-bit samples; expected 16-bit"):
    audio_lib.read_wav(_raw_wav(tmp_path / "u8.wav", width=1, frames=b"\x80" * 10))
