"""The ASR task: static-shape bucketed batches that resume exactly, WER counting, clear config
errors, and train -> export -> transcribe a held-out WAV end to end through the loop."""
import json

import jax
import numpy as np
import pytest

from configs import asr_tiny
from core import checkpoint as ckpt_lib
from data import audio as audio_lib
from data import tone_words
from infer import asr as infer_asr
from models import encdec
from train import loop, tasks
from train.tasks import asr as asr_task


def small_config(steps=24):
  """One bucket (one compile), batches of 8 (the 8 test devices), a 2-layer model."""
  c = asr_tiny.get_config()
  c.model.d_model, c.model.mlp_dim, c.model.subsampling_channels = 32, 64, 8
  c.model.n_heads, c.model.head_dim = 2, 16
  c.model.enc_layers, c.model.dec_layers = 1, 1
  c.data.num_train, c.data.num_eval, c.data.max_words = 48, 8, 2
  c.data.num_buckets, c.data.num_subbuckets = 1, 1
  c.data.max_duration = 8 * 1.7
  c.train.steps = steps
  c.train.log_every = 4
  c.train.eval_every = steps
  c.train.checkpoint_every = steps
  c.train.async_checkpoint = False
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 4
  return c


def test_word_errors_counts_substitutions_deletions_insertions():
  assert asr_task.word_errors(["a b c"], ["a x c d"]) == (2, 3)  # 1 sub + 1 ins
  assert asr_task.word_errors(["one two"], [""]) == (2, 2)  # empty hypothesis: deletions
  assert asr_task.word_errors(["", "one"], ["x", "one"]) == (0, 1)  # padding rows skipped


def test_char_errors_count_edits_over_reference_characters():
  # "one two" -> "one tw": 1 deletion; "six" -> "sax": 1 substitution; "" hypothesis: all 4 deleted
  assert asr_task.char_errors(["one two", "six", "nine"], ["one tw", "sax", ""]) == (6, 14)
  assert asr_task.char_errors(["abc"], ["abcd"]) == (1, 3)   # an insertion
  assert asr_task.char_errors(["", "x"], ["y", "x"]) == (0, 1)  # empty references are skipped


def test_batches_have_bucket_shapes_and_resume_exactly():
  c = small_config()
  c.data.num_buckets, c.data.num_subbuckets, c.data.max_duration = 2, 2, 8 * 2.0
  task = tasks.build(c)
  corpus = task.corpus("train")
  audio = [ex["audio"] for ex in corpus["source"]]
  tokens = [task.tokenizer.encode_array(t) for t in corpus["text"]]
  shapes = set(task.bucket_shapes())
  it = task.train_iterator(0, seed=3)
  seen = [next(it) for _ in range(4)]
  for b in seen:
    assert (b["audio"].shape[1], b["tokens"].shape[1]) in shapes
    assert b["audio"].shape[0] % 8 == 0
    for row in range(b["audio"].shape[0]):
      n, t = b["audio_len"][row], b["token_len"][row]
      assert np.all(b["audio"][row, n:] == 0) and np.all(b["tokens"][row, t:] == 0)
      if n:  # a real row is one corpus utterance, whole
        i = next(i for i, a in enumerate(audio) if a.size == n and np.array_equal(
            a.astype(np.float32) / 32768.0, b["audio"][row, :n]))
        assert np.array_equal(tokens[i], b["tokens"][row, :t])  # no BOS/EOS: the model adds them
  state = json.loads(json.dumps(it.get_state()))
  expect = [next(it) for _ in range(3)]
  resumed = task.train_iterator(0, seed=3)
  resumed.set_state(state)
  for a, b in zip(expect, (next(resumed) for _ in range(3))):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_config_errors_name_the_key():
  c = small_config()
  c.model.vocab_size = 100
  with pytest.raises(ValueError, match="model.vocab_size"):
    tasks.build(c).validate(8)
  c = small_config()
  c.model.eos_id = 5
  with pytest.raises(ValueError, match="model.eos_id"):
    tasks.build(c).validate(8)
  c = small_config()
  c.data.max_duration = 1.0
  with pytest.raises(ValueError, match="data.max_duration"):
    tasks.build(c).validate(8)


def test_train_export_transcribe_end_to_end(tmp_path, capsys):
  out = loop.train_and_evaluate(small_config(), tmp_path / "run")
  assert out["status"] == "complete"
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < 0.8 * losses[0]
  assert 0 <= out["eval_wer"] and 0 <= out["eval_cer"] and out["eval_utterances"] == 8
  # A held-out utterance (the test split) through the CLI, against the in-process decoder.
  audio, _ = tone_words.utterance(np.random.default_rng(99), max_words=2)
  wav = tmp_path / "held_out.wav"
  audio_lib.write_wav(str(wav), audio, tone_words.SAMPLE_RATE)
  export = tmp_path / "run" / "export"
  capsys.readouterr()  # the training log
  assert infer_asr.main(["--checkpoint", str(export), str(wav), "--max-tokens", "12"]) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[-1].startswith("RTFx ")
  meta = ckpt_lib.read_export_metadata(export)
  cfg = encdec.Config.from_dict({k: v for k, v in meta["model"].items() if k != "name"})
  graphdef, abstract = encdec.abstract_params(cfg)
  _, params = ckpt_lib.load_export(export, abstract)
  padded = np.zeros((1, 32000), np.float32)  # the CLI pads to whole --pad-seconds (2 s)
  padded[0, :audio.size] = audio / 32768.0
  ids = encdec.greedy_decode(graphdef, params, jax.numpy.asarray(padded),
                             jax.numpy.asarray([audio.size]), 12)
  text = asr_task.transcripts(tasks.build(small_config()).tokenizer, ids, cfg=cfg)[0]
  assert printed[0] == f"{wav}\t{text}"
