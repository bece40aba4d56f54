"""`synthetic_speech`: an ASR corpus synthesized locally with espeak-ng (no download).

Text. English sentences from the docstrings and comments of the bundled text corpus (the
Python standard library, :mod:`data.stdlib_corpus`): a paragraph is split into sentences at
``.!?`` and a sentence is kept when every word is plain letters (an optional ``'s`` style
suffix and trailing ``,;:`` allowed) and it has 3 to 40 words, so code (``foo()``,
``a_b``, ``x=1``) never reaches the speaker. Normalized text is lowercase ``a-z``, ``'`` and
single spaces: exactly what the transcript holds and what the tokenizer sees. A sentence goes
to ``test`` / ``validation`` / ``train`` by ``sha256(sentence) % 100`` (< 5 / < 10 / rest), so
no split shares a sentence; each split's sentences, in file order, form its word stream.

Utterances. Utterance ``i`` of a split draws, from ``default_rng([seed, split, i])``: a target
duration ``T = exp(N(log median_seconds, sigma))`` clipped to ``[min_seconds, max_seconds]``
(a log-normal: most utterances are a few seconds, with a long tail to ~30 s, like real ASR
sets), a voice (language x variant: the speaker), a rate in words/minute, a pitch and a noise seed. It
takes the next ``max(1, round(T * rate / 60))`` words of the split's stream (wrapping
around), speaks them and resamples to 16 kHz (:mod:`data.espeak`); a result longer than
``max_seconds`` loses words from its end until it fits, and the transcript is always exactly
the words spoken. Each chunk of 64 utterances is spoken in a fresh process (espeak-ng carries
state between utterances), so the audio is reproducible.

Features: ``audio`` int16 ``[n]`` at 16 kHz, ``text`` (normalized transcript), ``duration``
float32 seconds (``n / 16000``), ``speaker`` (the espeak voice, e.g. ``en-us+f2``), ``rate``
and ``pitch`` int32; example ``i`` of a split is utterance ``i`` of its plan. Splits: ``train`` (``num_train``), ``validation`` and ``test``
(``num_eval`` each). The same voices speak in every split (held-out text, not held-out
speakers).

Storage and caching as in :mod:`data.stdlib_corpus`: ArrayRecord written TF-free by TFDS,
read with ``tfds.data_source``; the config name holds a fingerprint of every generation
parameter and of the source text, so changing any of them prepares a new directory.
:func:`train_tokenizer` fits a SentencePiece model on the train transcripts and saves it in
the dataset directory.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import time

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from data import espeak, stdlib_corpus

NAME = "synthetic_speech"
SAMPLE_RATE = espeak.SAMPLE_RATE
SPLITS = ("train", "validation", "test")
# Speakers: espeak-ng English accents x voice variants (male m1-m7, female f1-f5, others).
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029")
VARIANTS = ("m1", "m3", "m5", "m7", "f1", "f2", "f3", "f4", "klatt", "max", "linda", "steph")
VOICES = tuple(f"{a}+{v}" for a in ACCENTS for v in VARIANTS)
RATE_RANGE = (130, 230)   # words/minute; espeak-ng's default is 175
PITCH_RANGE = (25, 75)    # espeak-ng scale, 50 = the voice's normal pitch
# A plain word: lowercase, Capitalized or ALLCAPS (no camelCase identifiers), optional 's.
_WORD = re.compile(r"^(?:[A-Za-z][a-z]*|[A-Z]+)(?:'[a-z]+)?[,;:]?$")
_NOT_TRANSCRIPT = re.compile(r"[^a-z' ]+")


def normalize_text(text: str) -> str:
  """Lowercase; drop every character but ``a-z``, ``'`` and spaces; collapse spaces."""
  return " ".join(_NOT_TRANSCRIPT.sub(" ", text.lower()).split())


def _source_texts(source: str) -> list[str]:
  """Docstrings (module, class, function) and comment blocks of one Python file, in order."""
  texts = []
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    tree = None
  if tree is not None:
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc:
          texts.append(doc)
  block = []
  for line in source.splitlines() + [""]:
    stripped = line.strip()
    if stripped.startswith("#") and not stripped.startswith("#!"):
      block.append(stripped.lstrip("#").strip())
    elif block:
      texts.append(" ".join(block))
      block = []
  return texts


def extract_sentences(text: str) -> list[str]:
  """Speakable English sentences of a docstring/comment (see the module docstring)."""
  out = []
  for paragraph in re.split(r"\n\s*\n", text):
    flat = " ".join(paragraph.split())
    for sentence in re.split(r"(?<=[.!?])\s+", flat):
      words = sentence.rstrip(".!?").split()
      if 3 <= len(words) <= 40 and all(_WORD.match(w) for w in words):
        out.append(normalize_text(sentence))
  return out


def split_of_sentence(sentence: str) -> str:
  h = int(hashlib.sha256(sentence.encode("utf-8")).hexdigest()[:8], 16) % 100
  return "test" if h < 5 else "validation" if h < 10 else "train"


def collect_sentences(max_files: int | None = None) -> tuple[dict[str, list[str]], str]:
  """Per split, the unique speakable sentences of the stdlib in file order; and the stdlib
  manifest fingerprint (the source-text identity)."""
  manifest = stdlib_corpus.scan_stdlib(max_files=max_files)
  seen, per_split = set(), {s: [] for s in SPLITS}
  for rel in manifest.paths:
    with open(os.path.join(manifest.root, rel), encoding="utf-8") as f:
      source = f.read()
    for text in _source_texts(source):
      for sentence in extract_sentences(text):
        if sentence not in seen:
          seen.add(sentence)
          per_split[split_of_sentence(sentence)].append(sentence)
  empty = [s for s, v in per_split.items() if not v]
  if empty:
    raise ValueError(f"no speakable sentences for split(s) {empty} in {len(manifest.paths)} "
                     "stdlib files; raise max_files (or pass None for all files).")
  return per_split, manifest.fingerprint


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One planned utterance: its words and how they are spoken."""
  text: str
  voice: str
  rate: int
  pitch: int
  target_seconds: float
  seed: int  # espeak-ng's noise seed


@dataclasses.dataclass(kw_only=True)
class SpeechConfig(tfds.core.BuilderConfig):
  """One prepared corpus: sizes, duration distribution, seed and the source sentences."""
  num_train: int = 4000
  num_eval: int = 200
  seed: int = 0
  median_seconds: float = 4.0
  sigma: float = 0.8
  min_seconds: float = 0.4
  max_seconds: float = 30.0
  max_files: int | None = None
  sentences: dict | None = dataclasses.field(default=None, repr=False)
  source_fingerprint: str = ""

  def num_examples(self, split: str) -> int:
    return self.num_train if split == "train" else self.num_eval


def plan_split(config: SpeechConfig, split: str) -> list[Utterance]:
  """The utterances of ``split``: a pure function of the config (see module docstring)."""
  words = " ".join(config.sentences[split]).split()
  split_code = SPLITS.index(split)
  cursor, plan = 0, []
  for i in range(config.num_examples(split)):
    rng = np.random.default_rng([config.seed, split_code, i])
    target = float(np.clip(np.exp(rng.normal(np.log(config.median_seconds), config.sigma)),
                           config.min_seconds, config.max_seconds))
    voice = VOICES[int(rng.integers(len(VOICES)))]
    rate = int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    n = max(1, round(target * rate / 60.0))
    chosen = [words[(cursor + j) % len(words)] for j in range(n)]
    cursor = (cursor + n) % len(words)
    seed = int(rng.integers(1 << 31))
    plan.append(Utterance(" ".join(chosen), voice, rate, pitch, target, seed))
  return plan


CHUNK = 64  # utterances per fresh synthesis process (fixed: part of the determinism)


def synthesize_split(config: SpeechConfig, split: str, *, start: int = 0,
                     stop: int | None = None, num_workers: int = 2):
  """Yields ``(index, transcript, int16 audio, utterance)`` for utterances ``start:stop`` of
  ``split``, each chunk of :data:`CHUNK` in a fresh process (:func:`data.espeak.
  synthesize_chunks`), so the audio does not depend on what this process spoke before."""
  plan = plan_split(config, split)
  stop = len(plan) if stop is None else stop
  if start % CHUNK:
    raise ValueError(f"start={start} must be a multiple of CHUNK={CHUNK} (chunk boundaries "
                     "are fixed so that the audio is reproducible).")
  bounds = [(i, min(i + CHUNK, stop)) for i in range(start, stop, CHUNK)]
  chunks = ([(u.text, u.voice, u.rate, u.pitch, u.seed, config.max_seconds)
             for u in plan[a:b]]
            for a, b in bounds)
  for (a, _), results in zip(bounds, espeak.synthesize_chunks(chunks, num_workers=num_workers)):
    for offset, (text, audio) in enumerate(results):
      yield a + offset, text, audio, plan[a + offset]


def make_config(*, num_train: int = 4000, num_eval: int = 200, seed: int = 0,
                median_seconds: float = 4.0, sigma: float = 0.8, min_seconds: float = 0.4,
                max_seconds: float = 30.0, max_files: int | None = None) -> SpeechConfig:
  """Validates the sizes, collects the sentences and names the config by a fingerprint."""
  for name, value in (("num_train", num_train), ("num_eval", num_eval)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive int (utterances per split).")
  if not 0 < min_seconds <= median_seconds <= max_seconds:
    raise ValueError(f"need 0 < min_seconds <= median_seconds <= max_seconds, got "
                     f"{min_seconds}, {median_seconds}, {max_seconds}.")
  if not sigma >= 0:
    raise ValueError(f"sigma={sigma} (log-normal spread of durations) must be >= 0.")
  sentences, source_fp = collect_sentences(max_files)
  params = dict(num_train=num_train, num_eval=num_eval, seed=seed, median_seconds=median_seconds,
                sigma=sigma, min_seconds=min_seconds, max_seconds=max_seconds,
                voices=VOICES, rates=RATE_RANGE, pitches=PITCH_RANGE, source=source_fp)
  fp = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  return SpeechConfig(
      name=f"n{num_train}_e{num_eval}_{fp}",
      description=(f"{num_train} train / {num_eval} validation / {num_eval} test utterances, "
                   f"median {median_seconds} s, seed {seed}."),
      num_train=num_train, num_eval=num_eval, seed=seed, median_seconds=median_seconds,
      sigma=sigma, min_seconds=min_seconds, max_seconds=max_seconds, max_files=max_files,
      sentences=sentences, source_fingerprint=source_fp)


class SyntheticSpeech(tfds.core.GeneratorBasedBuilder):
  """espeak-ng speech of stdlib docstring sentences (features: audio, text, duration, ...)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "espeak-ng utterances, rules in data/speech_synth.py."}

  def __init__(self, *, file_format=None, num_workers: int = 2, **kwargs):
    self._num_workers = num_workers  # synthesis processes; does not change the data
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)  # as in stdlib_corpus: no importlib_resources lookup

  def get_default_builder_config(self):
    return make_config()

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0] + "\n\n" + config.description,
        features=tfds.features.FeaturesDict({
            # raw little-endian bytes: 2 bytes a sample (the default int64 list is ~2x larger)
            "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16,
                                          encoding=tfds.features.Encoding.BYTES),
            "text": tfds.features.Text(),
            "duration": tfds.features.Scalar(dtype=np.float32),
            "speaker": tfds.features.Text(),
            "rate": tfds.features.Scalar(dtype=np.int32),
            "pitch": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://github.com/espeak-ng/espeak-ng",
        disable_shuffling=True,  # keep plan order: example i of a split is utterance i
        metadata=tfds.core.MetadataDict(
            sample_rate=SAMPLE_RATE, seed=config.seed, median_seconds=config.median_seconds,
            sigma=config.sigma, min_seconds=config.min_seconds, max_seconds=config.max_seconds,
            max_files=config.max_files, source_fingerprint=config.source_fingerprint,
            num_sentences={s: len(v) for s, v in config.sentences.items()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the text is on this machine, espeak-ng is local.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    config = self.builder_config
    for i, text, audio, utt in synthesize_split(config, split, num_workers=self._num_workers):
      yield i, {"audio": audio, "text": text, "duration": np.float32(audio.size / SAMPLE_RATE),
                "speaker": utt.voice, "rate": utt.rate, "pitch": utt.pitch}


_BUILDERS: dict[tuple, SyntheticSpeech] = {}


@contextlib.contextmanager
def _in_memory_shuffle():
  """TFDS' writer spills a split above 1 GB of serialized examples to temporary files through
  TensorFlow, which we do not install; keep the split in memory instead (~32 KB of RAM per
  second of audio: the 4000-utterance default needs ~0.7 GB, 20,000 about 3.5 GB)."""
  limit = tfds_shuffle.MAX_MEM_BUFFER_SIZE
  tfds_shuffle.MAX_MEM_BUFFER_SIZE = 1 << 40
  try:
    yield
  finally:
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = limit


def load_builder(data_dir: str | None = None, *, num_train: int = 4000, num_eval: int = 200,
                 seed: int = 0, median_seconds: float = 4.0, sigma: float = 0.8,
                 min_seconds: float = 0.4, max_seconds: float = 30.0,
                 max_files: int | None = None, num_workers: int = 2) -> SyntheticSpeech:
  """Returns the prepared builder, synthesizing the corpus (once, atomically) if needed
  with ``num_workers`` synthesis processes (the data does not depend on it)."""
  kwargs = dict(num_train=num_train, num_eval=num_eval, seed=seed,
                median_seconds=median_seconds, sigma=sigma, min_seconds=min_seconds,
                max_seconds=max_seconds, max_files=max_files)
  key = (stdlib_corpus.resolve_data_dir(data_dir), tuple(sorted(kwargs.items())))
  builder = _BUILDERS.get(key)
  if builder is None or not builder.is_prepared():
    config = make_config(**kwargs)
    with stdlib_corpus._quiet_tfds():  # pylint: disable=protected-access
      builder = SyntheticSpeech(config=config, data_dir=key[0], file_format="array_record",
                                num_workers=num_workers)
    if not builder.is_prepared():
      start = time.perf_counter()
      print(f"synthesizing {NAME} once ({num_train} + 2 x {num_eval} utterances) into "
            f"{builder.data_dir} ...", file=sys.stderr, flush=True)
      with stdlib_corpus._quiet_tfds(), _in_memory_shuffle():  # pylint: disable=protected-access
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      print(f"built {NAME} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    _BUILDERS[key] = builder
  return builder


def data_source(builder: SyntheticSpeech, split: str):
  """Random-access ArrayRecord source of one split (TF-free)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; {NAME} has {list(SPLITS)}.")
  return builder.as_data_source(split=split)


def read_metadata(builder: SyntheticSpeech, split: str) -> dict[str, np.ndarray]:
  """Per-example ``num_samples``, ``duration`` (float64 s) and ``text`` of a split.

  Cached as JSON in the dataset directory (reading every example decodes its audio)."""
  path = os.path.join(str(builder.data_dir), f"{split}_metadata.json")
  if not os.path.exists(path):
    source = data_source(builder, split)
    rows = [source[i] for i in range(len(source))]
    meta = {"num_samples": [int(np.asarray(r["audio"]).size) for r in rows],
            "text": [_as_str(r["text"]) for r in rows]}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(meta, f)
    os.replace(tmp, path)
  with open(path, encoding="utf-8") as f:
    meta = json.load(f)
  num_samples = np.asarray(meta["num_samples"], dtype=np.int64)
  return {"num_samples": num_samples, "duration": num_samples / SAMPLE_RATE,
          "text": meta["text"]}


def _as_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def train_tokenizer(builder: SyntheticSpeech, vocab_size: int = 256) -> str:
  """SentencePiece (unigram) fit on the train transcripts, saved next to the dataset.

  Ids: 0 pad, 1 bos, 2 eos, 3 unk. Returns the ``.model`` path (reused when present); load it
  with ``data.tokenizers.get_tokenizer("sentencepiece:" + path)``.
  """
  import sentencepiece as spm  # Only tokenizer training needs it.
  prefix = os.path.join(str(builder.data_dir), f"spm_unigram_{vocab_size}")
  if os.path.exists(prefix + ".model"):
    return prefix + ".model"
  texts = read_metadata(builder, "train")["text"]
  tmp = f"{prefix}.tmp{os.getpid()}"
  # The transcripts' alphabet is a-z, ' and space; hard_vocab_limit=False lets a tiny corpus
  # get fewer pieces than asked instead of failing.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=tmp, vocab_size=vocab_size,
      model_type="unigram", character_coverage=1.0, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
      hard_vocab_limit=False, num_threads=1, minloglevel=2)
  os.replace(tmp + ".model", prefix + ".model")
  os.replace(tmp + ".vocab", prefix + ".vocab")
  return prefix + ".model"


def describe_corpus(builder: SyntheticSpeech) -> dict:
  """Per split: utterances, hours of audio and duration percentiles; the dataset directory."""
  splits = {}
  for split in SPLITS:
    d = read_metadata(builder, split)["duration"]
    splits[split] = {
        "utterances": int(d.size), "hours": round(float(d.sum()) / 3600, 3),
        "seconds_p0_p10_p50_p90_p99_p100": [round(float(x), 2) for x in
                                            np.percentile(d, [0, 10, 50, 90, 99, 100])]}
  return {"name": f"{NAME}/{builder.builder_config.name}", "data_dir": str(builder.data_dir),
          "splits": splits}
