"""Offline text-to-speech with espeak-ng through ctypes, resampled to 16 kHz (NumPy/SciPy).

The PyPI package ``espeakng-loader`` ships ``libespeak-ng`` and its voice data, so synthesis
needs no system package and no network. We drive the C API directly (espeak-ng's
``speak_lib.h``)::

  espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0) -> sample rate (22050)
  espeak_SetSynthCallback(cb)        # cb(short *wav, int n, espeak_EVENT *events) -> 0
  espeak_SetVoiceByName("en-us+f2")  # language + voice variant
  espeak_SetParameter(espeakRATE, words_per_minute, 0), (espeakPITCH, 0..100, 0)
  espeak_Synth(text, size, 0, POS_CHARACTER, 0, espeakCHARS_UTF8, NULL, NULL)
  espeak_Synchronize()

In synchronous mode ``espeak_Synth`` calls the callback with int16 chunks before returning.
espeak-ng keeps global state (one voice, one callback per process), so `Synthesizer` is a
process-wide singleton guarded by a lock. That state also carries over from one utterance to
the next (the same text spoken twice in one process gives slightly different samples, even
after a re-initialization), and espeak-ng seeds its noise generator (breathy voices, klatt)
from the clock. A fresh process that sets ``espeak_ng_SetRandSeed`` before each utterance
always produces the same sequence. So :func:`synthesize_chunks` speaks each chunk of utterances in a fresh
spawned process: the audio is a pure function of the chunk, whatever ran before, and chunks
run in parallel. The 22.05 kHz output is resampled to 16 kHz with a
polyphase windowed-sinc filter: 16000 / 22050 = 320 / 441 (``scipy.signal.resample_poly``,
Kaiser window, which also low-passes at the new Nyquist frequency before decimating).
"""
from __future__ import annotations

import ctypes
import math
import multiprocessing
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
MIN_RATE, MAX_RATE = 80, 450  # espeak-ng's accepted words-per-minute range


def resample(audio: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
  """int16 audio at ``orig_rate`` -> int16 at ``new_rate`` (polyphase, rounded, clipped)."""
  if orig_rate == new_rate:
    return np.asarray(audio, dtype=np.int16)
  g = math.gcd(orig_rate, new_rate)
  out = signal.resample_poly(np.asarray(audio, dtype=np.float64), new_rate // g, orig_rate // g)
  return np.clip(np.round(out), -32768, 32767).astype(np.int16)


class Synthesizer:
  """espeak-ng in this process. Use :func:`synthesizer` (one instance per process)."""

  def __init__(self):
    import espeakng_loader  # A runtime dependency; only speech synthesis needs it.
    self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
    rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                       espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
      raise RuntimeError(f"espeak_Initialize failed ({rate}) with the data of "
                         f"espeakng_loader at {espeakng_loader.get_data_path()}; reinstall "
                         "espeakng-loader.")
    self.native_rate = int(rate)
    self._chunks: list[np.ndarray] = []
    self._callback = _CALLBACK(self._collect)  # kept alive: the C library holds the pointer
    self._lib.espeak_SetSynthCallback(self._callback)
    self._lock = threading.Lock()

  def _collect(self, wav, n, events) -> int:
    del events
    if wav and n > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0  # 0 = continue synthesis

  def synthesize(self, text: str, *, voice: str = "en-us", rate: int = 175,
                 pitch: int = 50, seed: int | None = None,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """int16 audio of ``text`` spoken by ``voice`` at ``rate`` words/minute and ``pitch``;
    ``seed`` seeds espeak-ng's noise generator first (otherwise seeded from the clock)."""
    if not text or not text.strip():
      raise ValueError("cannot synthesize an empty text; give at least one word.")
    if not MIN_RATE <= rate <= MAX_RATE:
      raise ValueError(f"rate={rate} words/minute is outside espeak-ng's [{MIN_RATE}, "
                       f"{MAX_RATE}].")
    if not 0 <= pitch <= 100:
      raise ValueError(f"pitch={pitch} must be in [0, 100] (espeak-ng's scale; 50 = normal).")
    with self._lock:
      if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"espeak-ng has no voice {voice!r}; use a language code with an "
                         "optional variant such as 'en-us', 'en-gb-x-rp+f2', 'en+m3'.")
      self._lib.espeak_SetParameter(_RATE, int(rate), 0)
      self._lib.espeak_SetParameter(_PITCH, int(pitch), 0)
      if seed is not None:
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(int(seed)))
      self._chunks = []
      raw = text.encode("utf-8") + b"\0"
      err = self._lib.espeak_Synth(raw, ctypes.c_size_t(len(raw)), 0, _POS_CHARACTER, 0,
                                   _CHARS_UTF8, None, None)
      self._lib.espeak_Synchronize()
      chunks, self._chunks = self._chunks, []
    if err != 0 or not chunks:
      raise RuntimeError(f"espeak-ng produced no audio for {text[:40]!r} (error {err}).")
    return resample(np.concatenate(chunks), self.native_rate, sample_rate)


_INSTANCE: Synthesizer | None = None
_INSTANCE_LOCK = threading.Lock()


def synthesizer() -> Synthesizer:
  """The process-wide espeak-ng synthesizer (initialized on first use)."""
  global _INSTANCE
  with _INSTANCE_LOCK:
    if _INSTANCE is None:
      _INSTANCE = Synthesizer()
    return _INSTANCE


def synthesize(text: str, **kwargs) -> np.ndarray:
  """Shortcut for ``synthesizer().synthesize(text, ...)``: int16 audio at 16 kHz."""
  return synthesizer().synthesize(text, **kwargs)


def speak_fitting(text: str, voice: str, rate: int, pitch: int, seed: int,
                  max_seconds: float) -> tuple[str, np.ndarray]:
  """``(transcript, int16 16 kHz audio)``: words are removed from the end (and the rest
  re-spoken) until the audio fits ``max_seconds``, so the transcript is exactly what is said."""
  words = text.split()
  while True:
    audio = synthesize(" ".join(words), voice=voice, rate=rate, pitch=pitch, seed=seed)
    if audio.size <= max_seconds * SAMPLE_RATE or len(words) == 1:
      return " ".join(words), audio
    keep = min(len(words) - 1, int(len(words) * max_seconds * SAMPLE_RATE / audio.size))
    words = words[:max(1, keep)]


Job = tuple  # (text, voice, rate, pitch, seed, max_seconds)


def _speak_chunk(jobs: Sequence[Job]) -> list[tuple[str, np.ndarray]]:
  return [speak_fitting(*job) for job in jobs]


def synthesize_chunks(chunks: Iterable[Sequence[Job]], *,
                      num_workers: int = 2) -> Iterator[list[tuple[str, np.ndarray]]]:
  """Speaks each chunk of jobs in its own fresh process (spawned; ``num_workers`` at a time)
  and yields the chunks' results in order. Deterministic: see the module docstring."""
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"num_workers={num_workers!r} must be a positive int.")
  ctx = multiprocessing.get_context("spawn")  # fork would copy this process's espeak state
  with ctx.Pool(processes=num_workers, maxtasksperchild=1) as pool:
    yield from pool.imap(_speak_chunk, chunks, chunksize=1)
