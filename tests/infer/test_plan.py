"""Decode-step plans for one chip (infer/plan.py): KV cache and weights against hand arithmetic,
the target's Pallas kernels in the compiled step, and the batch bound."""
from models import transformer
from infer import plan
from tests import aot

CFG = transformer.ModelConfig(n_layers=1)  # lm_tiny's block: d 128, 4 heads (2 KV) x 32
B, P, S = 8, 256, 64


def _kv(tokens):  # K and V, bf16, per layer
  return 2 * CFG.n_layers * tokens * CFG.n_kv_heads * CFG.head_dim * 2


def test_hydragen_stores_the_prefix_once_and_runs_the_triton_kernels():
  aot.devices("h200")
  plain = plan.plan(CFG, "h200", batch=B, prefix_len=P, suffix_len=S, hydragen=False, bits=None)
  hyd = plan.plan(CFG, "h200", batch=B, prefix_len=P, suffix_len=S, hydragen=True, bits=4)
  assert plain["kv_cache_bytes"] == _kv(B * (P + S))
  assert hyd["kv_cache_bytes"] == _kv(P + B * S) + 4 * B  # + int32 offsets
  # The compiler's argument buffers are exactly weights + cache + tokens + positions.
  for p in (plain, hyd):
    assert p["argument_size_in_bytes"] == p["weights_bytes"] + p["kv_cache_bytes"] + 2 * 4 * B
    assert p["alias_size_in_bytes"] == p["kv_cache_bytes"]  # the cache is updated in place
  # int4 per-OC groups of 128: K N / 2 bytes of codes + bf16 scales + uint8 zeros per group.
  d, h, kv, hd, m = CFG.d_model, CFG.n_heads, CFG.n_kv_heads, CFG.head_dim, CFG.mlp_dim
  shapes = [(d, h * hd), (d, kv * hd), (d, kv * hd), (h * hd, d), (d, m), (d, m), (m, d)]
  linear_bf16 = sum(2 * k * n for k, n in shapes)
  linear_int4 = sum(k * n // 2 + 3 * (k // 128) * n for k, n in shapes)
  assert plain["weights_bytes"] - hyd["weights_bytes"] == linear_bf16 - linear_int4
  # Triton calls: 7 low-bit matmuls + Hydragen's prefix and suffix attention, per layer.
  assert plain["pallas_calls"] == 0 and hyd["pallas_calls"] == 9 * CFG.n_layers
  assert hyd["total_bytes"] < plain["total_bytes"] and hyd["fits"]


def test_fit_batch_stops_where_the_cache_outgrows_the_budget():
  at2 = plan.plan(CFG, "h200", batch=2, prefix_len=P, suffix_len=S, hydragen=False, bits=None)
  res = plan.fit_batch(CFG, "h200", prefix_len=P, suffix_len=S, hydragen=False, bits=None,
                       max_batch=4, multiple=2, budget_bytes=at2["total_bytes"])
  assert (res["batch"], res["bytes"]) == (2, at2["total_bytes"])
  assert res["next_batch"] == 4 and res["next_bytes"] > at2["total_bytes"]
