"""rl.rollout: continuous batching == infer's greedy decoder, behaviour log-probs == a full
forward, interrupted sequences continue exactly as the new weights would, slot-independent
sampling, shared prompt prefills, bad input."""
import jax
import numpy as np
import pytest

from infer import decode
from models import transformer as T
from rl import rollout

CFG = T.preset("tiny", n_layers=2, vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2,
               head_dim=8, mlp_dim=64)
RNG = np.random.default_rng(0)
PROMPTS = [RNG.integers(3, 64, n).tolist() for n in (3, 9, 5, 4, 7)]
MAX_NEW = 12


@pytest.fixture(scope="module")
def models():
  graphdef, params_a = T.init(CFG, seed=0)
  _, params_b = T.init(CFG, seed=1)
  return graphdef, params_a, params_b


def _engine(graphdef, params, **kw):
  kw = {"num_slots": 2, "max_prompt_len": 16, "max_new_tokens": MAX_NEW, **kw}
  return rollout.RolloutEngine(CFG, graphdef, params, **kw)


def _greedy_reference(graphdef, params, prompts, max_new):
  dec = decode.Decoder(CFG, graphdef, params, max_len=64)
  gen = dec.generate(prompts, decode.SamplingParams(max_new_tokens=max_new), hydragen=False)
  return [g[0] for g in gen.tokens]


def test_continuous_batching_matches_the_greedy_decoder(models):
  graphdef, params, _ = models
  engine = _engine(graphdef, params, temperature=0.0)  # 2 slots for 5 prompts: slots are reused
  trajs = engine.generate(list(enumerate(PROMPTS)))
  assert [t.tokens for t in trajs] == _greedy_reference(graphdef, params, PROMPTS, MAX_NEW)
  assert all(t.finish_reason == "length" and t.versions == [0] * MAX_NEW for t in trajs)


def test_behaviour_logprobs_equal_a_full_forward(models):
  graphdef, params, _ = models
  engine = _engine(graphdef, params, temperature=0.7, vocab_limit=50)
  for t in engine.generate(list(enumerate(PROMPTS[:3]))):
    seq = np.array(t.prompt + t.tokens, np.int32)[None]
    logits = T.apply(graphdef, params, seq)
    full = rollout.token_logprobs(logits[:, :-1], seq[:, 1:], 0.7, 50)[0, len(t.prompt) - 1:]
    np.testing.assert_allclose(t.logps, np.asarray(full), atol=2e-5)
    assert max(t.tokens) < 50  # ids past vocab_limit are never sampled


def test_interrupted_sequences_continue_with_the_new_weights(models):
  graphdef, params_a, params_b = models
  engine = _engine(graphdef, params_a, num_slots=4, temperature=0.0)
  for uid in range(3):  # slot 3 stays free through the update
    engine.add(uid, PROMPTS[uid])
  for _ in range(4):
    assert engine.step() == []
  calls = engine.stats["prefill_calls"]
  engine.update_weights(params_b, 1)
  assert engine.stats["prefill_calls"] == calls + 1  # all slots re-prefilled in one call
  engine.add(3, PROMPTS[3])  # a new prompt in the slot that was free
  trajs = {}
  while engine.in_flight():
    trajs.update({t.uid: t for t in engine.step()})
  assert trajs[3].tokens == _greedy_reference(graphdef, params_b, [PROMPTS[3]], MAX_NEW)[0]
  for uid in range(3):
    t = trajs[uid]
    assert t.versions == [0] * 4 + [1] * (MAX_NEW - 4) and t.interruptions == 1
    before = _greedy_reference(graphdef, params_a, [PROMPTS[uid]], 4)[0]
    assert t.tokens[:4] == before  # tokens already generated are kept
    after = _greedy_reference(graphdef, params_b, [PROMPTS[uid] + before], MAX_NEW - 4)[0]
    assert t.tokens[4:] == after  # what the new weights produce greedily from that prefix
    seq = np.array(t.prompt + t.tokens, np.int32)[None]
    new_logp = rollout.token_logprobs(T.apply(graphdef, params_b, seq)[:, :-1], seq[:, 1:],
                                      0.0, CFG.vocab_size)[0, len(t.prompt) - 1:]
    np.testing.assert_allclose(t.logps[4:], np.asarray(new_logp)[4:], atol=2e-5)


def test_sampling_depends_on_uid_not_slot_and_prompts_share_prefill(models):
  graphdef, params, _ = models
  requests = [(uid, PROMPTS[uid // 3]) for uid in range(6)]  # 2 prompts x 3 samples
  one_slot = _engine(graphdef, params, num_slots=1, seed=3).generate(requests)
  engine = _engine(graphdef, params, num_slots=4, seed=3)
  four_slots = engine.generate(requests[::-1])[::-1]
  assert [t.tokens for t in one_slot] == [t.tokens for t in four_slots]
  np.testing.assert_allclose([t.logps for t in one_slot], [t.logps for t in four_slots],
                             atol=1e-5)
  assert engine.stats["shared_prefills"] == 4  # each prompt prefilled once for its 3 samples
  assert len({tuple(t.tokens) for t in one_slot}) > 2  # temperature 1: samples differ


def test_stop_tokens_free_the_slot(models):
  graphdef, params, _ = models
  first = _engine(graphdef, params, temperature=0.0).generate([(0, PROMPTS[0])])[0]
  stop = first.tokens[2]
  t = _engine(graphdef, params, temperature=0.0, stop_tokens=(stop,)).generate(
      [(0, PROMPTS[0])])[0]
  assert t.finish_reason == "stop" and t.tokens == first.tokens[:first.tokens.index(stop) + 1]


def test_bad_input(models):
  graphdef, params, _ = models
  engine = _engine(graphdef, params, num_slots=1)
  with pytest.raises(ValueError, match="exceeds max_prompt_len"):
    engine.add(0, list(range(3, 20)))
  with pytest.raises(ValueError, match="prompt is empty"):
    engine.add(0, [])
  with pytest.raises(ValueError, match="outside the model's vocabulary"):
    engine.add(0, [1, 99])
  engine.add(0, PROMPTS[0])
  with pytest.raises(RuntimeError, match="no free slot"):
    engine.add(1, PROMPTS[1])
  with pytest.raises(ValueError, match="versions only increase"):
    engine.update_weights(params, -1)
  with pytest.raises(ValueError, match="temperature"):
    _engine(graphdef, params, temperature=-1.0)
  assert jax.devices()[0] in engine.mesh.devices.flat
