"""data/speech.py: ASR batches with static per-bucket shapes, exact contents, exact resume,
too-long utterances dropped-and-counted or refused, empty transcripts refused."""
import json

import numpy as np
import pytest

from data import bucketing, speech
from data import tokenizers as tokenizers_lib

TOK = tokenizers_lib.ByteTokenizer()
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def fake_corpus(n=120, seed=0):
  """In-memory source: long-tailed lengths, ~12 characters of transcript per second."""
  rng = np.random.default_rng(seed)
  seconds = np.clip(rng.lognormal(np.log(1.0), 0.6, n), 0.1, 6.0)
  samples = np.maximum(1, (seconds * 16000).astype(np.int64))
  source, texts = [], []
  for i in range(n):
    text = " ".join(rng.choice(WORDS, max(1, int(seconds[i] * 2))))
    source.append({"audio": rng.integers(-2000, 2000, samples[i]).astype(np.int16),
                   "text": text})
    texts.append(text)
  return source, samples, texts


def make(source, samples, texts, **kw):
  kw = {"num_buckets": 4, "num_subbuckets": 2, "max_duration": 12.0, "seed": 3, **kw}
  return speech.AsrBatches(source, samples, texts, TOK, **kw)


def test_batches_have_bucket_shapes_and_exact_contents():
  source, samples, texts = fake_corpus()
  it = make(source, samples, texts, shuffle=False, num_epochs=1, remainder="pad")
  shapes = it.bucket_shapes()
  assert [(s["num_samples"], s["max_tokens"]) for s in it.static_shapes()] == shapes
  seen = []
  for batch in it:
    k = batch["bucket"]
    b = it.batch_sizes[k]
    assert batch["audio"].shape == (b, shapes[k][0]) and batch["audio"].dtype == np.float32
    assert batch["tokens"].shape == (b, shapes[k][1]) and batch["tokens"].dtype == np.int32
    assert batch["audio_len"].dtype == batch["token_len"].dtype == np.int32
    # A padded batch stays within its bucket's duration budget.
    assert b * it.grid.max_duration[k] <= 12.0
    for row, i in enumerate(batch["index"]):
      if i < 0:
        assert batch["audio_len"][row] == batch["token_len"][row] == 0
        assert not batch["audio"][row].any() and (batch["tokens"][row] == TOK.pad_id).all()
        continue
      n, length = batch["audio_len"][row], batch["token_len"][row]
      assert n == samples[i] <= shapes[k][0]
      np.testing.assert_array_equal(batch["audio"][row, :n] * 32768,
                                    source[i]["audio"].astype(np.float32))
      assert not batch["audio"][row, n:].any()
      want = [TOK.bos_id] + TOK.encode(texts[i]) + [TOK.eos_id]
      assert batch["tokens"][row, :length].tolist() == want
      assert (batch["tokens"][row, length:] == TOK.pad_id).all()
      seen.append(int(i))
  # One evaluation pass: every kept example exactly once.
  assert sum(it.dropped.values()) + len(seen) == len(texts)
  assert len(seen) == len(set(seen))


def test_tokens_without_bos_eos():
  source, samples, texts = fake_corpus(40)
  it = make(source, samples, texts, bos_eos=False, shuffle=False, num_epochs=1,
            remainder="pad")
  for batch in it:
    for row, i in enumerate(batch["index"]):
      if i >= 0:
        assert batch["tokens"][row, :batch["token_len"][row]].tolist() == TOK.encode(texts[i])


def test_resume_is_exact_through_json():
  source, samples, texts = fake_corpus()
  full = make(source, samples, texts)
  first = [next(full) for _ in range(7)]
  state = json.loads(json.dumps(full.get_state()))
  want = [next(full) for _ in range(12)]  # crosses into the next epoch
  resumed = make(source, samples, texts)
  resumed.set_state(state)
  got = [next(resumed) for _ in range(12)]
  assert first  # iterated before saving
  for a, b in zip(want, got):
    assert a["bucket"] == b["bucket"]
    for key in speech.BATCH_KEYS + ("index",):
      np.testing.assert_array_equal(a[key], b[key])


def test_synchronized_ranks_share_shapes_and_split_examples():
  source, samples, texts = fake_corpus()
  ranks = [make(source, samples, texts, num_processes=2, process_index=r) for r in (0, 1)]
  for _ in range(10):
    a, b = next(ranks[0]), next(ranks[1])
    assert a["bucket"] == b["bucket"] and a["audio"].shape == b["audio"].shape
    assert not set(a["index"][a["index"] >= 0]) & set(b["index"][b["index"] >= 0])


def test_too_long_utterance_is_dropped_and_counted_or_refused():
  source, samples, texts = fake_corpus()
  grid = make(source, samples, texts).grid  # estimated without the long one
  long_audio = np.ones(int(max(grid.max_duration) * 16000) + 1600, dtype=np.int16)
  source.append({"audio": long_audio, "text": "alpha beta"})
  samples = np.append(samples, long_audio.size)
  texts.append("alpha beta")
  it = make(source, samples, texts, grid=grid.to_dict(), shuffle=False, num_epochs=1,
            remainder="pad")
  assert it.dropped["too_long"] == 1
  assert all(len(source) - 1 not in batch["index"] for batch in it)
  with pytest.raises(ValueError, match="fits no bucket.*too_long='drop'"):
    make(source, samples, texts, grid=grid, strict=True)


def test_bad_input_is_refused_with_a_reason():
  source, samples, texts = fake_corpus(20)
  texts[5] = "   "
  with pytest.raises(ValueError, match="example 5 has an empty transcript"):
    make(source, samples, texts)
  texts[5] = "alpha"
  samples[7] = 0
  with pytest.raises(ValueError, match="example 7 has no audio samples"):
    make(source, samples, texts)
  with pytest.raises(ValueError, match="one num_samples per transcript"):
    make(source, samples[:-1], texts)


def test_bucket_samples_never_cuts_audio():
  for n in (1, 159, 16000, 16001, 123457, 64000):
    assert speech.bucket_samples(n / 16000) == n
  assert speech.bucket_samples(4.0) == 64000 and speech.bucket_samples(4.00001) == 64001
  grid = bucketing.BucketGrid((0.5, 1.0), (10, 20))
  assert [speech.bucket_samples(d) for d in grid.max_duration] == [8000, 16000]
