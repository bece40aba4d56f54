"""infer.decode: cached greedy == full forward, Hydragen == plain, sampling, stops, static
shapes (compilation counts), sharded == single device, quantized params, bad requests.

Every test reuses one tiny 2-layer model and the same shape buckets so that the compiled
prefill/decode functions are shared (compiling dominates the CPU time here).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer import decode as D
from infer import sampling as S
from models import transformer as T
from core import qtensor
from core import sharding

CFG = T.preset("tiny", n_layers=2, vocab_size=384, d_model=32, n_heads=4, n_kv_heads=2,
               head_dim=8, mlp_dim=64)
RNG = np.random.default_rng(0)
PREFIX = RNG.integers(3, CFG.vocab_size, 20).tolist()
PROMPTS = [RNG.integers(3, CFG.vocab_size, n).tolist() for n in (3, 9, 5)]  # uneven
GREEDY2 = D.SamplingParams(max_new_tokens=10, num_samples=2)


@pytest.fixture(scope="module")
def model():
  graphdef, params = T.init(CFG, seed=0)
  return graphdef, params, D.Decoder(CFG, graphdef, params, max_len=128)


@pytest.fixture(scope="module")
def plain_greedy(model):
  return model[2].generate(PROMPTS, GREEDY2, prefix=PREFIX, hydragen=False)


@functools.lru_cache(maxsize=None)
def _full_forward(graphdef):
  return jax.jit(lambda p, t: T.apply(graphdef, p, t))


def _assert_greedy_matches_forward(graphdef, params, full_prompts, generation):
  """Each greedy token == argmax of the full (cache-free) forward over the sequence so far."""
  forward = _full_forward(graphdef)
  for p, prompt in enumerate(full_prompts):
    samples = generation.tokens[p]
    assert all(s == samples[0] for s in samples)  # greedy: every sample is the same
    seq = prompt + samples[0]
    padded = np.zeros((1, 64), np.int32)  # causal: padding after the sequence is invisible
    padded[0, :len(seq)] = seq
    logits = forward(params, padded)[0]
    want = np.argmax(logits[len(prompt) - 1:len(prompt) - 1 + len(samples[0])], axis=-1)
    np.testing.assert_array_equal(samples[0], want)


def test_cached_greedy_equals_full_forward_argmax(model, plain_greedy):
  graphdef, params, _ = model
  _assert_greedy_matches_forward(graphdef, params, [PREFIX + p for p in PROMPTS], plain_greedy)
  assert plain_greedy.token_array.shape == (3, 2, 10)


def test_hydragen_two_levels_equals_plain(model, plain_greedy):
  """Level 0: the shared prefix; level 1: each prompt, shared by its 2 samples."""
  hyd = model[2].generate(PROMPTS, GREEDY2, prefix=PREFIX, hydragen=True)
  np.testing.assert_array_equal(hyd.token_array, plain_greedy.token_array)
  assert hyd.prefill_tokens == len(PREFIX) + sum(map(len, PROMPTS))  # prefix counted once
  assert plain_greedy.prefill_tokens == hyd.prefill_tokens  # the plain path caches it too


def test_hydragen_one_level_equals_plain(model, plain_greedy):
  dec = model[2]
  # n = 1: the prefix is the only shared level; each prompt lives in its suffix cache.
  hyd = dec.generate(PROMPTS, D.SamplingParams(max_new_tokens=10), prefix=PREFIX,
                     hydragen=True)
  np.testing.assert_array_equal(hyd.token_array[:, 0], plain_greedy.token_array[:, 0])
  # No prefix, n = 2: each prompt is the only shared level, for its two samples.
  full = [PREFIX + p for p in PROMPTS]
  hyd = dec.generate(full, GREEDY2, hydragen=True)
  np.testing.assert_array_equal(hyd.token_array, plain_greedy.token_array)


def test_top_k_1_is_greedy_and_seeds_reproduce(model, plain_greedy):
  dec = model[2]
  top1 = dec.generate(PROMPTS, D.SamplingParams(max_new_tokens=10, num_samples=2,
                                                temperature=1.0, top_k=1, seed=5),
                      prefix=PREFIX, hydragen=False)
  np.testing.assert_array_equal(top1.token_array, plain_greedy.token_array)
  hot = D.SamplingParams(max_new_tokens=10, num_samples=2, temperature=2.0, seed=(1, 2, 3))
  a = dec.generate(PROMPTS, hot, prefix=PREFIX, hydragen=False)
  b = dec.generate(PROMPTS, hot, prefix=PREFIX, hydragen=False)
  np.testing.assert_array_equal(a.token_array, b.token_array)
  assert not np.array_equal(a.token_array[:, 0], a.token_array[:, 1])  # samples differ
  other = dec.generate(PROMPTS, D.SamplingParams(**{**hot.__dict__, "seed": (7, 2, 3)}),
                       prefix=PREFIX, hydragen=False)
  assert not np.array_equal(other.token_array[0], a.token_array[0])  # its seed changed
  np.testing.assert_array_equal(other.token_array[1:], a.token_array[1:])  # theirs did not


def test_filter_logits_top_p_and_top_k_on_a_hand_made_distribution():
  probs = np.array([0.05, 0.5, 0.15, 0.3], np.float32)
  logits = jnp.log(jnp.asarray(np.tile(probs, (5, 1))))
  top_p = jnp.array([0.5, 0.75, 0.85, 1.0, 1.0], jnp.float32)
  top_k = jnp.array([0, 0, 0, 0, 2], jnp.int32)
  kept = np.isfinite(np.asarray(S.filter_logits(logits, top_k, top_p)))
  np.testing.assert_array_equal(kept, [
      [0, 1, 0, 0],  # 0.5 >= 0.5
      [0, 1, 0, 1],  # 0.5 < 0.75 <= 0.8
      [0, 1, 1, 1],  # 0.8 < 0.85 <= 0.95
      [1, 1, 1, 1],  # p = 1: off
      [0, 1, 0, 1],  # top-2
  ])


def test_stop_tokens_pad_the_rest_and_max_new_tokens(model, plain_greedy):
  dec = model[2]
  greedy = plain_greedy.tokens[1][0]
  stop_at = 4
  stop = D.SamplingParams(max_new_tokens=10, num_samples=2, stop_tokens=(greedy[stop_at],))
  out = dec.generate(PROMPTS, stop, prefix=PREFIX, hydragen=False)
  first = greedy.index(greedy[stop_at])
  assert out.tokens[1][0] == greedy[:first + 1]
  assert out.finish_reasons[1][0] == "stop"
  np.testing.assert_array_equal(out.token_array[1, 0, first + 1:], 0)  # padding after
  short = dec.generate(PROMPTS, D.SamplingParams(max_new_tokens=3, num_samples=2),
                       prefix=PREFIX, hydragen=False)
  assert short.token_array.shape == (3, 2, 3)
  for p in range(3):
    assert short.tokens[p][0] == plain_greedy.tokens[p][0][:3]
    assert short.finish_reasons[p] == ["length", "length"]


def test_requests_in_one_bucket_do_not_recompile(model):
  dec = model[2]
  dec.generate([[5, 6, 7], [8] * 11, [2]], D.SamplingParams(max_new_tokens=5, num_samples=2),
               prefix=PREFIX, hydragen=True)
  sizes = D._prefill._cache_size(), D._decode._cache_size()
  # Other lengths, counts, max_new_tokens, sampling params and stops, same buckets.
  dec.generate([[9] * 16, [4], [3, 3]], D.SamplingParams(
      max_new_tokens=13, num_samples=2, temperature=0.7, top_k=5, top_p=0.9, seed=(1, 2, 3),
      stop_tokens=(7, 8)), prefix=PREFIX[:17], hydragen=True)
  assert (D._prefill._cache_size(), D._decode._cache_size()) == sizes


def test_bad_requests_raise_clear_errors(model):
  dec = model[2]
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    dec.generate([[5], []])
  with pytest.raises(ValueError, match="max_len is 128.*never truncated"):
    dec.generate([[5] * 100], D.SamplingParams(max_new_tokens=10), prefix=[4] * 20)
  with pytest.raises(ValueError, match="outside the model's vocabulary"):
    dec.generate([[5, CFG.vocab_size]])
  with pytest.raises(ValueError, match="shared prefix has token ids"):
    dec.generate([[5]], prefix=[-1, 4])
  with pytest.raises(ValueError, match="prompts is empty"):
    dec.generate([])
  with pytest.raises(ValueError, match="top_p"):
    dec.generate([[5]], D.SamplingParams(top_p=0.0))
  with pytest.raises(ValueError, match="one per prompt"):
    dec.generate([[5], [6]], D.SamplingParams(seed=(1, 2, 3)))


def test_sharded_decode_equals_single_device(model, plain_greedy):
  """Heads over tensor=2, batch over data=2 x fsdp=2, on the 8 fake CPU devices; the
  20-token prefix is also prefilled in two chunks of 16."""
  graphdef, params, _ = model
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  dec = D.Decoder(CFG, graphdef, params, max_len=128, mesh=mesh, prefill_chunk=16)
  q_kernel = dec.params["layers"][0]["attn"]["q_proj"]["kernel"]
  assert len(q_kernel.sharding.device_set) == 8 and not q_kernel.sharding.is_fully_replicated
  out = dec.generate(PROMPTS, GREEDY2, prefix=PREFIX, hydragen=True)
  np.testing.assert_array_equal(out.token_array, plain_greedy.token_array)


def _quantize_kernels(params, bits=4, group_size=16, seed=0):
  """(params with every linear kernel a QuantizedWeight, same params dequantized)."""
  rng = np.random.default_rng(seed)
  quantized = jax.tree.map(lambda x: x, params)
  dense = jax.tree.map(lambda x: x, params)
  for layer in quantized["layers"]:
    for block in ("attn", "mlp"):
      for name, proj in quantized["layers"][layer][block].items():
        k, n = proj["kernel"].shape
        codes = rng.integers(0, 1 << bits, (k, n))
        scales = rng.uniform(0.01, 0.05, (k // group_size, n)).astype(np.float32)
        zeros = np.full((k // group_size, n), 1 << (bits - 1))
        qw = qtensor.from_codes(jnp.asarray(codes, jnp.int32), jnp.asarray(scales), zeros,
                                bits=bits, group_size=group_size, dim="oc",
                                dtype=jnp.float32)
        proj["kernel"] = qw
        dense["layers"][layer][block][name]["kernel"] = qtensor.dequantize(qw)
  return quantized, dense


def test_quantized_params_decode_like_their_dequantized_weights(model, plain_greedy):
  graphdef, params, _ = model
  quantized, dense = _quantize_kernels(params)
  assert isinstance(quantized["layers"][0]["mlp"]["up_proj"]["kernel"], qtensor.QuantizedWeight)
  full = [PREFIX + p for p in PROMPTS]
  out = D.Decoder(CFG, graphdef, quantized, max_len=128).generate(full, GREEDY2,
                                                                  hydragen=False)
  _assert_greedy_matches_forward(graphdef, dense, full, out)
  assert not np.array_equal(out.token_array, plain_greedy.token_array)  # weights did change


def test_hydragen_decode_lowers_for_cuda_with_pallas_kernels(monkeypatch):
  """The model's Hydragen path picks the Pallas GPU kernels on a GPU; check, without one,
  that the decode loop with them lowers for CUDA (bf16, GQA, one prefix level)."""
  from kernels_pallas import prefix_attention as pa
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # impl="auto" picks pallas_gpu
  cfg = T.preset("tiny", n_layers=1, vocab_size=128, d_model=64, head_dim=16, mlp_dim=64,
                 dtype="bfloat16")
  graphdef, params = T.abstract_params(cfg)
  batch, prefix_len, suffix_len = 8, 64, 32
  sds = jax.ShapeDtypeStruct
  kv = lambda b, s: sds((b, s, cfg.n_kv_heads, cfg.head_dim), jnp.bfloat16)
  level = pa.PrefixLevel(kv(1, prefix_len), kv(1, prefix_len), (batch,), sds((1,), jnp.int32))
  cache = [{"k": kv(batch, suffix_len), "v": kv(batch, suffix_len), "levels": (level,),
            "offset": sds((batch,), jnp.int32)}]
  i32 = lambda *s: sds(s, jnp.int32)
  f32 = lambda *s: sds(s, jnp.float32)
  exported = jax.export.export(
      D._decode, platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
          graphdef, params, cache, f32(batch, cfg.vocab_size), i32(batch),
          sds((batch,), jnp.bool_), i32(batch, 16), i32(), sds((batch,), jnp.uint32),
          i32(batch), f32(batch), i32(batch), f32(batch), i32(D.MAX_STOP_TOKENS), i32(), i32())
  assert exported.mlir_module().count('name = "prefix_attention_gpu"') >= 2  # prefix, suffix


def test_sharded_quantized_hydragen_decode_runs_the_kernels_per_shard():
  """The engine on data=2 x tensor=2 with int4 weights and two Hydragen levels (the prefix,
  replicated over the data shards, and each prompt, shared by its 2 samples), the Pallas GPU
  kernels per shard in interpret mode: the unsharded reference's greedy tokens."""
  from kernels_pallas import common  # noqa: PLC0415
  # Head dim and per-shard widths the GPU kernels tile (>= 16); its own graphdef, so the
  # jitted prefill/decode are traced afresh inside the context below.
  cfg = T.preset("tiny", n_layers=1, vocab_size=128, d_model=64, n_heads=4, n_kv_heads=2,
                 head_dim=16, mlp_dim=128)
  graphdef, params = T.init(cfg, seed=0)
  quantized, _ = _quantize_kernels(params)
  rng = np.random.default_rng(1)
  prefix = rng.integers(3, cfg.vocab_size, 20).tolist()
  prompts = [rng.integers(3, cfg.vocab_size, n).tolist() for n in (3, 9, 5)]
  params_ = D.SamplingParams(max_new_tokens=4, num_samples=2)
  want = D.Decoder(cfg, graphdef, quantized, max_len=64).generate(prompts, params_,
                                                                  prefix=prefix)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  warned = set(common._warned)
  with common.target_backend("gpu", interpret=True):
    got = D.Decoder(cfg, graphdef, quantized, max_len=64, mesh=mesh).generate(
        prompts, params_, prefix=prefix)
  assert set(common._warned) == warned  # no kernel fell back to the reference
  np.testing.assert_array_equal(got.token_array, want.token_array)
