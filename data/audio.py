"""Audio front end: log-mel features in JAX, and 16-bit PCM WAV reading/writing.

Log-mel (the usual ASR front end, e.g. NeMo's ``AudioToMelSpectrogramPreprocessor`` without
dither/pre-emphasis; Canary: 80 bins, 25 ms window, 10 ms hop). For a waveform x at rate r:

  window  w = periodic Hann of length W = win_ms * r / 1000, centred in n_fft samples
  frame   t covers x[t*H - n_fft/2 : t*H + n_fft/2] (H = hop_ms * r / 1000), zero padding
          outside x ("center=True", constant pad), so frames = 1 + n // H  (`num_frames`)
  power   P[t, k] = |sum_n w[n] x[t*H - n_fft/2 + n] e^{-2 pi i k n / n_fft}|^2,  k < n_fft/2+1
  mel     M[t, m] = sum_k P[t, k] F[k, m]: triangular filters, centres equally spaced on the
          HTK mel scale mel(f) = 2595 log10(1 + f / 700) between 0 Hz and r / 2 (unnormalized)
  log     L = log(M + 2^-24)  (NeMo's additive guard: finite on digital silence)

Zero padding makes the features padding-invariant: the first ``num_frames(n)`` frames of an
utterance zero-padded to any longer length equal those of the utterance alone, so a batch
padded to its bucket's static length gives each example its own features (mask the rest).
"""
from __future__ import annotations

import functools
import os
import wave

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000
LOG_GUARD = 2.0 ** -24


def _samples(ms: float, sample_rate: int) -> int:
  n = ms * sample_rate / 1000.0
  if abs(n - round(n)) > 1e-6 or round(n) < 1:
    raise ValueError(f"{ms} ms at {sample_rate} Hz is not a positive whole number of samples.")
  return int(round(n))


def num_frames(num_samples, *, sample_rate: int = SAMPLE_RATE, hop_ms: float = 10.0):
  """Feature frames of ``num_samples`` samples: ``1 + num_samples // hop`` (works on arrays)."""
  return 1 + num_samples // _samples(hop_ms, sample_rate)


def hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = 512,
                   n_mels: int = 80) -> np.ndarray:
  """``[n_fft // 2 + 1, n_mels]`` float32 HTK triangular filters (peak 1 at each centre)."""
  edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))
  freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lower) / (centre - lower)
  down = (upper - freqs[:, None]) / (upper - centre)
  return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _window(win: int, n_fft: int) -> np.ndarray:
  """Periodic Hann of length ``win`` zero-padded (centred) to ``n_fft``, as torch.stft does."""
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)
  left = (n_fft - win) // 2
  return np.pad(hann, (left, n_fft - win - left)).astype(np.float32)


def log_mel(audio: jax.Array, *, sample_rate: int = SAMPLE_RATE, n_mels: int = 80,
            win_ms: float = 25.0, hop_ms: float = 10.0, n_fft: int = 512) -> jax.Array:
  """``[B, T]`` float waveforms in [-1, 1] -> ``[B, 1 + T // hop, n_mels]`` float32 log-mel."""
  audio = jnp.asarray(audio)
  if audio.ndim != 2:
    raise ValueError(f"log_mel expects audio of shape [batch, samples], got {audio.shape}; "
                     "add a batch axis with audio[None].")
  win, hop = _samples(win_ms, sample_rate), _samples(hop_ms, sample_rate)
  if win > n_fft:
    raise ValueError(f"window {win} samples ({win_ms} ms) exceeds n_fft={n_fft}; raise n_fft.")
  frames = num_frames(audio.shape[1], sample_rate=sample_rate, hop_ms=hop_ms)
  padded = jnp.pad(audio.astype(jnp.float32), ((0, 0), (n_fft // 2, n_fft // 2)))
  idx = jnp.arange(frames)[:, None] * hop + jnp.arange(n_fft)[None, :]
  spectrum = jnp.fft.rfft(padded[:, idx] * _window(win, n_fft), n=n_fft, axis=-1)
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
  mel = jnp.einsum("btk,km->btm", power, mel_filterbank(sample_rate, n_fft, n_mels),
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + LOG_GUARD)


def int16_to_float(audio) -> np.ndarray:
  """int16 PCM -> float32 in [-1, 1): x / 32768."""
  return np.asarray(audio, dtype=np.float32) / 32768.0


def read_wav(path: str, *, expected_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
  """``(int16 mono audio, sample_rate)`` of a 16-bit PCM WAV file.

  Raises ``ValueError`` naming what was found and what is expected when the file is missing,
  not a readable WAV, not 16-bit mono PCM, empty, or (with ``expected_rate``, 16 kHz by
  default; ``None`` accepts any rate) at another sample rate.
  """
  if not os.path.isfile(path):
    raise ValueError(f"audio file {path!r} does not exist; give the path of a 16-bit PCM WAV.")
  try:
    with wave.open(path, "rb") as f:
      channels, width, rate, n = (f.getnchannels(), f.getsampwidth(), f.getframerate(),
                                  f.getnframes())
      raw = f.readframes(n)
  except (wave.Error, EOFError, OSError) as e:
    raise ValueError(f"{path!r} is not a readable WAV file ({e}); convert it to 16-bit PCM "
                     f"mono WAV at {expected_rate or SAMPLE_RATE} Hz (e.g. `sox IN -b 16 -c 1 "
                     f"-r {expected_rate or SAMPLE_RATE} OUT.wav`).") from None
  if width != 2:
    raise ValueError(f"{path!r} has {8 * width}-bit samples; expected 16-bit PCM (convert "
                     "with `sox IN -b 16 OUT.wav`).")
  if channels != 1:
    raise ValueError(f"{path!r} has {channels} channels; expected mono (mix down with "
                     "`sox IN -c 1 OUT.wav`).")
  audio = np.frombuffer(raw, dtype="<i2").astype(np.int16)
  if audio.size == 0:
    raise ValueError(f"{path!r} holds no audio samples (an empty recording); nothing to "
                     "transcribe.")
  if expected_rate is not None and rate != expected_rate:
    raise ValueError(f"{path!r} is sampled at {rate} Hz; expected {expected_rate} Hz "
                     f"(resample with `sox IN -r {expected_rate} OUT.wav`).")
  return audio, rate


def write_wav(path: str, audio, sample_rate: int = SAMPLE_RATE, *,
              overwrite: bool = False) -> None:
  """Writes int16 mono ``audio`` as a 16-bit PCM WAV; refuses to replace a file unless
  ``overwrite``."""
  audio = np.asarray(audio)
  if audio.dtype != np.int16 or audio.ndim != 1:
    raise ValueError(f"write_wav expects 1-D int16 audio, got {audio.dtype} {audio.shape}.")
  if os.path.exists(path) and not overwrite:
    raise ValueError(f"{path!r} exists; pass overwrite=True to replace it.")
  with wave.open(path, "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(int(sample_rate))
    f.writeframes(audio.astype("<i2").tobytes())
