"""A toy spoken-digits corpus synthesized in memory: each word is a short chord sequence.

A stand-in for real speech that an attention encoder-decoder learns on a CPU in minutes, so the
ASR task (:mod:`train.tasks.asr`) and its tests run anywhere without a corpus on disk. The ten
words ``zero .. nine`` each have a fixed signature: two segments, each the sum of two sines at
word-specific frequencies (300-3000 Hz, drawn once from a fixed seed). An utterance is 1 to
``max_words`` words; per utterance a speed factor (0.8-1.25) scales every segment length, per
word the amplitude varies, words are separated by 30-120 ms of silence, with 50-200 ms at
both ends and white noise at -30 dB. Transcripts are the words joined by spaces, so the model
must learn to spell (byte tokens) what it hears.

Everything is a pure function of ``(split, num_examples, seed)``: splits use different seeds,
so the validation and test utterances are new sentences with new timing.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
_FREQS = np.random.default_rng(1234).uniform(300.0, 3000.0, size=(len(WORDS), 2, 2))


def _word(w: int, speed: float, amp: float, rng: np.random.Generator) -> np.ndarray:
  parts = []
  for seg in range(2):
    n = int(SAMPLE_RATE * rng.uniform(0.08, 0.12) * speed)
    t = np.arange(n) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * _FREQS[w, seg, 0] * t) + np.sin(2 * np.pi * _FREQS[w, seg, 1] * t)
    parts.append(0.5 * amp * tone * np.hanning(n))
  return np.concatenate(parts)


def utterance(rng: np.random.Generator, max_words: int = 6) -> tuple[np.ndarray, str]:
  """``(int16 audio at 16 kHz, transcript)`` of one random utterance."""
  words = rng.integers(0, len(WORDS), size=int(rng.integers(1, max_words + 1)))
  speed = rng.uniform(0.8, 1.25)
  silence = lambda lo, hi: np.zeros(int(SAMPLE_RATE * rng.uniform(lo, hi)))
  pieces = [silence(0.05, 0.2)]
  for i, w in enumerate(words):
    if i:
      pieces.append(silence(0.03, 0.12))
    pieces.append(_word(int(w), speed, rng.uniform(0.3, 0.8), rng))
  pieces.append(silence(0.05, 0.2))
  audio = np.concatenate(pieces)
  audio = audio + rng.normal(0.0, 0.03 * 0.5, audio.shape)
  pcm = np.clip(np.round(audio * 32767 * 0.5), -32768, 32767).astype(np.int16)
  return pcm, " ".join(WORDS[int(w)] for w in words)


def load(split: str, num_examples: int, *, seed: int = 0, max_words: int = 6):
  """``{"audio": [int16 arrays], "text": [str], "duration": f64 [N] seconds}`` of a split."""
  if split not in SPLIT_SEEDS:
    raise ValueError(f"tone_words split {split!r} is unknown; available: {sorted(SPLIT_SEEDS)}.")
  if int(num_examples) < 1:
    raise ValueError(f"tone_words needs num_examples >= 1, got {num_examples}.")
  if int(max_words) < 1:
    raise ValueError(f"tone_words needs max_words >= 1, got {max_words}.")
  rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
  audio, text = zip(*(utterance(rng, max_words) for _ in range(int(num_examples))))
  return {"audio": list(audio), "text": list(text),
          "duration": np.array([a.size / SAMPLE_RATE for a in audio])}
