"""models/encdec: the log-mel front end against NumPy, padding invariance of the encoder and of
cross-attention, decoder causality, greedy decoding against teacher-forced argmax."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import encdec, registry
from models.configs import EncDecConfig

CFG = EncDecConfig(d_model=32, n_heads=2, head_dim=16, enc_layers=2, dec_layers=2, mlp_dim=64,
                   subsampling_channels=8, conv_kernel=5)
# jitted: eager op-by-op dispatch over the 8 test devices is slower than one compile
apply = jax.jit(encdec.apply, static_argnums=0)
encode = jax.jit(encdec.encode, static_argnums=0)


@pytest.fixture(scope="module")
def model():
  graphdef, _ = encdec.abstract_params(CFG)
  return graphdef, jax.jit(lambda: encdec.init(CFG, seed=0)[1])()


def _audio(seed, n, total):
  rng = np.random.default_rng(seed)
  a = np.zeros(total, np.float32)
  a[:n] = rng.normal(0, 0.3, n)
  return a


def test_num_params_and_registry_round_trip(model):
  _, params = model
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == CFG.num_params()
  module, cfg = registry.from_dict(registry.to_dict(encdec, CFG))
  assert module is encdec and cfg == CFG


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="conv_kernel"):
    EncDecConfig(conv_kernel=4)
  with pytest.raises(ValueError, match="n_mels"):
    EncDecConfig(n_mels=81)
  with pytest.raises(ValueError, match="eos_id"):
    EncDecConfig(vocab_size=10, eos_id=12)


def test_log_mel_matches_numpy_reference():
  sr, n = 16_000, 5000
  audio = _audio(0, n, 6400)
  feats, valid = encdec.log_mel(jnp.asarray(audio[None]), jnp.array([n]))
  hop, win, n_fft = 160, 400, 512
  x = np.concatenate([audio[:n], np.zeros(6400 - n + win)])
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
  rows = []
  for t in range(6400 // hop):
    spec = np.fft.rfft(x[t * hop:t * hop + win] * window, n_fft)
    rows.append(np.log(np.abs(spec)**2 @ encdec.mel_filterbank(sr, n_fft, 80) + 2.0**-24))
  mel = np.array(rows)
  nv = -(-n // hop)
  ref = (mel[:nv] - mel[:nv].mean(0)) / np.sqrt(mel[:nv].var(0) + 1e-5)
  assert int(valid[0]) == nv
  np.testing.assert_allclose(np.asarray(feats[0, :nv]), ref, atol=2e-3)
  assert np.all(np.asarray(feats[0, nv:]) == 0)


def test_padding_does_not_change_real_frames_or_logits(model):
  """Same utterances padded to two lengths, garbage in the padding: identical encoder output
  at real positions and identical decoder logits (cross-attention ignores padded positions)."""
  graphdef, params = model
  lens = np.array([9000, 5000])
  short = np.stack([_audio(1, lens[0], 10240), _audio(2, lens[1], 10240)])
  long = np.random.default_rng(3).normal(0, 5.0, (2, 20480)).astype(np.float32)  # garbage
  long[:, :10240] = short
  long[0, :lens[0]], long[1, :lens[1]] = short[0, :lens[0]], short[1, :lens[1]]
  for i, n in enumerate(lens):
    long[i, n:10240] = 7.0  # garbage past the end of the real audio, too
  enc_s, len_s = encode(graphdef, params, jnp.asarray(short), jnp.asarray(lens))
  enc_l, len_l = encode(graphdef, params, jnp.asarray(long), jnp.asarray(lens))
  np.testing.assert_array_equal(len_s, len_l)
  for i in range(2):
    k = int(len_s[i])
    np.testing.assert_allclose(enc_s[i, :k], enc_l[i, :k], atol=1e-5)
    assert np.all(np.asarray(enc_l[i, k:]) == 0)
  dec = jnp.array([[1, 50, 60, 70], [1, 80, 90, 100]])
  lg_s = apply(graphdef, params, jnp.asarray(short), jnp.asarray(lens), dec)
  lg_l = apply(graphdef, params, jnp.asarray(long), jnp.asarray(lens), dec)
  np.testing.assert_allclose(lg_s, lg_l, atol=1e-4)


def test_decoder_is_causal(model):
  graphdef, params = model
  audio = jnp.asarray(_audio(4, 8000, 10240)[None])
  a = jnp.array([[1, 10, 20, 30, 40, 50]])
  b = a.at[0, 3].set(99)
  la = apply(graphdef, params, audio, jnp.array([8000]), a)
  lb = apply(graphdef, params, audio, jnp.array([8000]), b)
  np.testing.assert_allclose(la[0, :3], lb[0, :3], atol=1e-5)
  assert not np.allclose(la[0, 3:], lb[0, 3:], atol=1e-3)


def test_greedy_decode_equals_teacher_forced_argmax(model):
  """The KV-cache decode loop agrees with the no-cache forward: feeding ``[BOS] + output`` to
  the full decoder, the argmax at every step is the token greedy decoding emitted there (EOS
  where it stopped)."""
  graphdef, params = model
  audio = jnp.asarray(np.stack([_audio(5, 9000, 10240), _audio(6, 4000, 10240)]))
  lens = jnp.array([9000, 4000])
  steps = 8
  out = np.asarray(jax.jit(encdec.greedy_decode, static_argnums=(0, 4))(
      graphdef, params, audio, lens, steps))
  logits = apply(graphdef, params, audio, lens,
                        encdec.decoder_inputs(jnp.asarray(out[:, :-1]), CFG.bos_id))
  argmax = np.asarray(jnp.argmax(logits, -1))
  for row in range(2):
    stop = np.flatnonzero(out[row] == CFG.pad_id)
    n = stop[0] if stop.size else steps
    assert argmax[row, :n].tolist() == out[row, :n].tolist()
    if n < steps:
      assert argmax[row, n] in (CFG.eos_id, CFG.pad_id)


def test_decoder_targets_put_eos_after_the_transcript():
  tokens = jnp.array([[5, 6, 7, 0], [8, 0, 0, 0]])
  targets, weights = encdec.decoder_targets(tokens, jnp.array([3, 1]), eos_id=2, pad_id=0)
  assert targets.tolist() == [[5, 6, 7, 2, 0], [8, 2, 0, 0, 0]]
  assert weights.tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
  assert encdec.decoder_inputs(tokens, 1).tolist() == [[1, 5, 6, 7, 0], [1, 8, 0, 0, 0]]


def test_cut_at_stop_drops_ids_the_tokenizer_does_not_have():
  ids = np.array([7, 300, 9, CFG.eos_id, 5])
  assert encdec.cut_at_stop(ids, CFG).tolist() == [7, 300, 9]
  assert encdec.cut_at_stop(ids, CFG, vocab_size=256).tolist() == [7, 9]


def _ctc_brute_force(log_probs, labels, blank):
  """-log sum over every frame path that collapses (merge repeats, drop blanks) to labels."""
  t, k = log_probs.shape
  total = -np.inf
  for path in np.ndindex(*(k,) * t):
    merged = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
    if [s for s in merged if s != blank] == list(labels):
      total = np.logaddexp(total, sum(log_probs[i, s] for i, s in enumerate(path)))
  return -total


def test_ctc_loss_equals_the_sum_over_alignments_and_skips_what_cannot_fit():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5, 3)).astype(np.float32)  # 4 utterances, 5 frames, blank 0
  frames = np.array([5, 4, 5, 2])
  tokens = np.array([[1, 2, 0], [2, 2, 0], [1, 1, 2], [1, 2, 1]], np.int32)
  token_len = np.array([2, 2, 3, 3])  # the last needs 3 frames and has 2: skipped
  mask = np.arange(5)[None] < frames[:, None]
  total, counted = encdec.ctc_loss(jnp.asarray(logits), jnp.asarray(mask), jnp.asarray(tokens),
                                   jnp.asarray(token_len), blank_id=0)
  log_probs = jax.nn.log_softmax(logits, -1)
  want = sum(_ctc_brute_force(np.asarray(log_probs[b, :frames[b]]), tokens[b, :token_len[b]], 0)
             for b in range(3))
  np.testing.assert_allclose(float(total), want, rtol=1e-5)
  assert float(counted) == 3.0


def test_ctc_head_adds_its_parameters_and_its_loss_to_the_task():
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel
  from train.tasks import asr  # pylint: disable=import-outside-toplevel
  cfg = EncDecConfig(**{**CFG.to_dict(), "ctc_weight": 0.3})
  graphdef, params = encdec.init(cfg, seed=0)
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == cfg.num_params()
  assert cfg.num_params() == CFG.num_params() + cfg.vocab_size * cfg.d_model
  with pytest.raises(ValueError, match="ctc_weight"):
    EncDecConfig(ctc_weight=1.0)
  task = asr.Task.__new__(asr.Task)  # the loss needs the model config only
  task.model_cfg, task.model = cfg, encdec
  task.config = ConfigDict({"model": {"name": "encdec", **cfg.to_dict()}})
  batch = {"audio": jnp.asarray(np.stack([_audio(1, 9000, 12000), _audio(2, 12000, 12000)])),
           "audio_len": jnp.array([9000, 12000], jnp.int32),
           "tokens": jnp.array([[5, 6, 7], [8, 9, 0]], jnp.int32),
           "token_len": jnp.array([3, 2], jnp.int32)}
  out = task.forward(graphdef, params, batch)
  total, count = task.loss(out, batch)
  nll, count_nll = task._nll(out["logits"], batch)  # pylint: disable=protected-access
  ctc, _ = encdec.ctc_loss(out["ctc_logits"], out["enc_mask"], batch["tokens"],
                           batch["token_len"], blank_id=cfg.pad_id)
  assert float(count) == float(count_nll) == 7.0  # 3 + 2 tokens and two EOS
  np.testing.assert_allclose(float(total), 0.7 * float(nll) + 0.3 * float(ctc), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out["logits"]),
                             np.asarray(encdec.apply(graphdef, params, batch["audio"],
                                                     batch["audio_len"], encdec.decoder_inputs(
                                                         batch["tokens"], cfg.bos_id))),
                             rtol=1e-6)
