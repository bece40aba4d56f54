"""data/espeak.py and data/speech_synth.py: espeak-ng speech, the sentence rules, the
utterance plan, a tiny built corpus round trip, the SentencePiece tokenizer on it."""
import numpy as np
import pytest

from data import defaults, espeak, speech, speech_synth
from data import tokenizers as tokenizers_lib

TINY = dict(num_train=8, num_eval=2, max_files=60)


def _dominant_hz(x: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
  return float(np.argmax(spectrum) * rate / x.size)


def test_speech_is_nonsilent_16khz_and_grows_with_text():
  words = "the quick brown fox jumps over the lazy dog".split()
  lengths = []
  for n in (1, 4, 9, 27):
    audio = espeak.synthesize(" ".join((words * 3)[:n]), voice="en-us+f2", rate=175, pitch=50)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 300  # clearly not silence
    lengths.append(audio.size)
  assert all(a < b for a, b in zip(lengths, lengths[1:])), lengths
  slow = espeak.synthesize("one two three four five", rate=130).size
  fast = espeak.synthesize("one two three four five", rate=230).size
  assert fast < slow


def test_resample_keeps_frequency_and_length():
  t = np.arange(22050) / 22050
  tone = (10000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
  out = espeak.resample(tone, 22050, 16000)
  assert out.dtype == np.int16 and out.size == 16000  # 22050 * 320 / 441
  assert abs(_dominant_hz(out.astype(np.float64), 16000) - 1000) <= 1.0


def test_synthesize_bad_input():
  with pytest.raises(ValueError, match="empty text"):
    espeak.synthesize("  ")
  with pytest.raises(ValueError, match="no voice 'xx-nope'"):
    espeak.synthesize("hello there", voice="xx-nope")
  with pytest.raises(ValueError, match="outside espeak-ng"):
    espeak.synthesize("hello there", rate=10)


def test_sentence_rules_keep_prose_and_drop_code():
  text = ("Return the number of items in the queue. Call foo(x) to reset it. "
          "Uses self._lock and getAttr here. Hi. It's the user's choice, always!\n\n"
          "See PEP and the README first.")
  assert speech_synth.extract_sentences(text) == [
      "return the number of items in the queue", "it's the user's choice always",
      "see pep and the readme first"]
  assert speech_synth.normalize_text("  Hello,   World! 42 times. ") == "hello world times"


def test_sentences_of_the_splits_are_disjoint():
  per_split, fingerprint = speech_synth.collect_sentences(max_files=60)
  sets = {s: set(v) for s, v in per_split.items()}
  assert len(fingerprint) == 64 and all(sets.values())
  assert not sets["train"] & sets["validation"] and not sets["train"] & sets["test"]
  assert not sets["validation"] & sets["test"]


def test_plan_has_a_long_tail_of_durations():
  config = speech_synth.make_config(num_train=3000, num_eval=1, max_files=60)
  plan = speech_synth.plan_split(config, "train")
  target = np.array([u.target_seconds for u in plan])
  assert len(plan) == 3000 and len({u.voice for u in plan}) > 30
  assert target.min() < 1.0 and target.max() > 20.0 and 3.0 < np.median(target) < 5.0
  assert np.mean(target) > np.median(target)  # right-skewed
  assert plan == speech_synth.plan_split(config, "train")  # a pure function of the config


def test_make_config_rejects_bad_sizes():
  with pytest.raises(ValueError, match="num_train=0 must be a positive int"):
    speech_synth.make_config(num_train=0)
  with pytest.raises(ValueError, match="min_seconds <= median_seconds"):
    speech_synth.make_config(median_seconds=40.0)


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  return speech_synth.load_builder(str(tmp_path_factory.mktemp("speech")), **TINY)


def test_tiny_corpus_round_trip(tiny_builder):
  splits = {name: s.num_examples for name, s in tiny_builder.info.splits.items()}
  assert splits == {"train": 8, "validation": 2, "test": 2}
  config = tiny_builder.builder_config
  source = speech_synth.data_source(tiny_builder, "train")
  plan = speech_synth.plan_split(config, "train")
  for i in range(len(source)):
    ex = source[i]
    text = ex["text"].decode() if isinstance(ex["text"], bytes) else ex["text"]
    audio = np.asarray(ex["audio"])
    assert audio.dtype == np.int16 and 0 < audio.size <= 30 * 16000
    assert float(ex["duration"]) == pytest.approx(audio.size / 16000, rel=1e-6)
    assert text == speech_synth.normalize_text(text) and text == plan[i].text
    assert (ex["speaker"].decode() if isinstance(ex["speaker"], bytes) else ex["speaker"]) \
        == plan[i].voice
  # The stored audio is exactly what the plan synthesizes again (reproducible, untruncated).
  for i, text, again, _ in speech_synth.synthesize_split(config, "train", num_workers=1):
    assert text == plan[i].text
    np.testing.assert_array_equal(np.asarray(source[i]["audio"]), again)
  # Cached: a second call finds the prepared directory.
  assert speech_synth.load_builder(str(tiny_builder.data_dir).split("/synthetic_speech")[0],
                                   **TINY).data_dir == tiny_builder.data_dir
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    speech_synth.data_source(tiny_builder, "dev")


def test_tokenizer_round_trips_transcripts(tiny_builder):
  path = speech_synth.train_tokenizer(tiny_builder, vocab_size=64)
  assert path == speech_synth.train_tokenizer(tiny_builder, vocab_size=64)  # reused
  tok = tokenizers_lib.get_tokenizer("sentencepiece:" + path)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for text in speech_synth.read_metadata(tiny_builder, "train")["text"]:
    ids = tok.encode(text)
    assert ids and min(ids) > 3 and tok.decode(ids) == text


def test_asr_batches_from_the_built_corpus(tiny_builder):
  tok = tokenizers_lib.get_tokenizer(
      "sentencepiece:" + speech_synth.train_tokenizer(tiny_builder, vocab_size=64))
  meta = speech_synth.read_metadata(tiny_builder, "train")
  it = speech.make_asr_batches(tiny_builder, "train", tok, num_buckets=2, num_subbuckets=1,
                               max_duration=60.0, shuffle=False, num_epochs=1, remainder="pad")
  source = speech_synth.data_source(tiny_builder, "train")
  seen = []
  for batch in it:
    for row in range(batch["audio"].shape[0]):
      n, i = batch["audio_len"][row], int(batch["index"][row])
      if i < 0:
        assert n == 0 and batch["token_len"][row] == 0
        continue
      assert n == meta["num_samples"][i]
      seen.append(i)
      np.testing.assert_array_equal(batch["audio"][row, :n] * 32768.0,
                                    np.asarray(source[i]["audio"]).astype(np.float32))
      length = batch["token_len"][row]
      assert tok.decode(batch["tokens"][row, 1:length - 1].tolist()) == meta["text"][i]
  assert sorted(seen) == list(range(8))


def test_readme_snippet_runs():
  import pathlib
  from tests.readme_snippets import python_blocks
  blocks = python_blocks(pathlib.Path(__file__).parents[2] / "README.md",
                         "### Speech corpus (`data/speech_synth.py`, `data/audio.py`, "
                         "`data/speech.py`)")
  assert blocks, "README lost its speech corpus section"
  for code in blocks:
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used


def test_batches_from_config_share_the_train_grid(tiny_builder):
  cfg = defaults.speech_config()
  cfg.update(dict(data_dir=str(tiny_builder.data_dir).split("/synthetic_speech")[0],
                  num_train=8, num_eval=2, max_files=60, tokenizer_vocab=64, num_buckets=2,
                  num_subbuckets=1, max_duration=60.0))
  train = speech.batches_from_config(cfg, "train", training=True)
  assert train.dropped == {"too_long": 0, "tps_outlier": 0}
  batch = next(train)
  assert batch["tokens"][:, 0].tolist() == [train.tokenizer.bos_id] * len(batch["tokens"])
  evaluation = speech.batches_from_config(cfg, "validation", training=False, grid=train.grid)
  assert evaluation.grid == train.grid  # same static shapes, so no new compiles
  rows = sum(int((b["index"] >= 0).sum()) for b in evaluation)
  assert rows + sum(evaluation.dropped.values()) == 2
  cfg.name = "python_stdlib"
  with pytest.raises(ValueError, match="reads the locally built 'synthetic_speech'"):
    speech.batches_from_config(cfg, "train", training=True)
