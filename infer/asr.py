"""Transcribe WAV files with an exported speech model (models/encdec) and report RTFx.

    python infer/asr.py --checkpoint workdirs/asr_tiny/export a.wav b.wav

Files are 16-bit PCM mono WAV at the model's sample rate (16 kHz), read by
``data.audio.read_wav`` (missing, unreadable, empty, stereo or wrong-rate files are errors
that say what to fix). Each is padded to a
multiple of ``--pad-seconds`` (files of the same padded length form one batch and one
compile) and decoded greedily for ``--max-tokens`` steps. RTFx = audio seconds / wall seconds
of the transcription, compilation excluded (each shape is compiled once before the clock
starts), as Canary (arXiv 2503.05931) reports it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # `python infer/asr.py`: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from core import checkpoint  # noqa: E402
from data import audio as audio_lib  # noqa: E402
from data import tokenizers  # noqa: E402
from models import encdec, registry  # noqa: E402

FRAME_MULTIPLE = encdec.SUBSAMPLING * 160


class Transcriber:
  """An export loaded once: ``transcribe(list of int16 arrays) -> (texts, stats)``."""

  def __init__(self, export_dir: str, *, max_tokens: int | None = None,
               pad_seconds: float = 2.0):
    meta = checkpoint.read_export_metadata(export_dir)
    module, self.cfg = registry.from_dict(meta["model"])
    if module is not encdec:
      raise ValueError(f"{export_dir} holds a {meta['model'].get('name')!r} model; "
                       "infer/asr.py transcribes speech models (encdec); use infer/main.py.")
    self.graphdef, abstract = encdec.abstract_params(self.cfg)
    _, self.params = checkpoint.load_export(export_dir, abstract)
    self.tokenizer = tokenizers.get_tokenizer(meta.get("tokenizer", "byte"))
    buckets = meta.get("buckets") or {}
    self.max_tokens = int(max_tokens or 2 * max(buckets.get("max_tokens", [64])) + 1)
    if self.max_tokens < 1:
      raise ValueError(f"--max-tokens={self.max_tokens} must be >= 1.")
    if not pad_seconds > 0:
      raise ValueError(f"--pad-seconds={pad_seconds} must be > 0.")
    step = int(round(pad_seconds * self.cfg.sample_rate))
    self.pad_samples = -(-step // FRAME_MULTIPLE) * FRAME_MULTIPLE
    self._decode = jax.jit(encdec.greedy_decode, static_argnums=(0, 4))

  def _padded(self, n: int) -> int:
    return -(-n // self.pad_samples) * self.pad_samples

  def _groups(self, audios):
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(audios):
      groups.setdefault(self._padded(a.size), []).append(i)
    for length, idx in groups.items():
      batch = np.zeros((len(idx), length), np.float32)
      for row, i in enumerate(idx):
        batch[row, :audios[i].size] = audios[i].astype(np.float32) / 32768.0
      yield idx, jnp.asarray(batch), jnp.asarray([audios[i].size for i in idx], jnp.int32)

  def transcribe(self, audios: list[np.ndarray]) -> tuple[list[str], dict]:
    if not audios:
      raise ValueError("no audio to transcribe.")
    groups = list(self._groups(audios))
    for _, batch, lens in groups:  # compile every shape before the clock starts
      self._decode(self.graphdef, self.params, batch, lens, self.max_tokens).block_until_ready()
    texts: list[str] = [""] * len(audios)
    t0 = time.perf_counter()
    outs = [(idx, self._decode(self.graphdef, self.params, batch, lens, self.max_tokens))
            for idx, batch, lens in groups]
    for idx, ids in outs:
      for row, i in enumerate(idx):
        texts[i] = self.tokenizer.decode(encdec.cut_at_stop(
            np.asarray(ids[row]), self.cfg, self.tokenizer.vocab_size).tolist()).strip()
    wall = time.perf_counter() - t0
    seconds = sum(a.size for a in audios) / self.cfg.sample_rate
    return texts, {"audio_seconds": seconds, "wall_seconds": wall,
                   "rtfx": seconds / max(wall, 1e-9)}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python infer/asr.py", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="an export of an encdec model")
  p.add_argument("audio", nargs="+", help="16-bit PCM mono WAV files")
  p.add_argument("--max-tokens", type=int, default=None,
                 help="decoding steps (default: twice the export's largest bucket + 1)")
  p.add_argument("--pad-seconds", type=float, default=2.0,
                 help="audio is padded to a multiple of this (one compile per length)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    rate = int(checkpoint.read_export_metadata(args.checkpoint)["model"].get("sample_rate",
                                                                             16_000))
    audios = [audio_lib.read_wav(path, expected_rate=rate)[0] for path in args.audio]
    model = Transcriber(args.checkpoint, max_tokens=args.max_tokens,
                        pad_seconds=args.pad_seconds)
    texts, stats = model.transcribe(audios)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path, text in zip(args.audio, texts):
    print(f"{path}\t{text}")
  print(f"RTFx {stats['rtfx']:.1f} ({stats['audio_seconds']:.2f} s of audio in "
        f"{stats['wall_seconds']:.3f} s, compilation excluded)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
