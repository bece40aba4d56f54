"""models/lora.py: LoRA and IA3 on the transformer, trained through train/ with a frozen base."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm_tiny_lora
from core import sharding
from models import configs, lora, registry, transformer
from train import loop
from train import optimizer as optimizer_lib

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
            mlp_dim=48)


def _cfg(**kw):
  return configs.PeftConfig(**{**TINY, **kw})


def _tokens(seed=0, shape=(2, 12)):
  return jax.random.randint(jax.random.key(seed), shape, 0, TINY["vocab_size"])


@pytest.mark.parametrize("rank", [1, 4])
def test_lora_trainable_count_is_rank_times_in_plus_out(rank):
  cfg = _cfg(lora_rank=rank, peft_targets=("q_proj", "v_proj", "embed"))
  d, q_out, v_out = 32, 4 * 8, 2 * 8
  want = TINY["n_layers"] * rank * ((d + q_out) + (d + v_out)) + rank * (64 + d)
  assert lora.num_trainable(cfg) == want
  _, params = lora.init(cfg)
  assert sum(x.size for x in jax.tree.leaves(params["peft"])) == want


def test_ia3_trainable_count_is_one_vector_per_target():
  cfg = _cfg(peft="ia3", peft_targets=("k_proj", "v_proj", "down_proj"))
  assert lora.num_trainable(cfg) == TINY["n_layers"] * (16 + 16 + 48)


@pytest.mark.parametrize("kw", [dict(), dict(peft_targets=("q_proj", "v_proj", "embed")),
                                dict(peft="ia3", peft_targets=("k_proj", "v_proj", "down_proj"))])
def test_output_equals_the_base_model_at_init(kw):
  cfg = _cfg(**kw)
  graph, params = lora.init(cfg, seed=3)
  base = transformer.Config(**TINY)
  base_graph, base_params = transformer.init(base, seed=3)
  tokens = _tokens()
  np.testing.assert_array_equal(lora.apply(graph, params, tokens),
                                transformer.apply(base_graph, base_params, tokens))


def test_lora_is_the_low_rank_update_of_the_weight():
  """Folding: W' = W + (alpha/r) A B on exactly the targets, nothing else changes."""
  cfg = _cfg(lora_rank=2, lora_alpha=6.0)
  _, params = lora.init(cfg)
  params["peft"] = jax.tree.map(lambda x: x + 0.5, params["peft"])
  eff = lora.effective_params(params, cfg)
  q = params["peft"]["layers"][1]["attn"]["q_proj"]
  np.testing.assert_allclose(eff["layers"][1]["attn"]["q_proj"]["kernel"],
                             params["base"]["layers"][1]["attn"]["q_proj"]["kernel"]
                             + 3.0 * q["a"] @ q["b"], rtol=1e-6)
  np.testing.assert_array_equal(eff["layers"][1]["attn"]["k_proj"]["kernel"],
                                params["base"]["layers"][1]["attn"]["k_proj"]["kernel"])


def test_logical_axes_match_the_params():
  cfg = _cfg(peft_targets=("q_proj", "embed"))
  axes = lora.logical_axes(cfg)
  _, shapes = lora.abstract_params(cfg)
  is_axes = lambda x: isinstance(x, tuple)
  for ax, s in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(shapes)):
    assert len(ax) == len(s.shape)
  assert axes["peft"]["layers"][0]["attn"]["q_proj"] == {"a": ("embed", None),
                                                          "b": (None, "heads")}


@pytest.mark.parametrize("kw,match", [(dict(peft="adapterz"), "model.peft"),
                                      (dict(peft_targets=("qproj",)), "unknown: \\['qproj'\\]"),
                                      (dict(lora_rank=0), "lora_rank"),
                                      (dict(peft="ia3", peft_targets=("embed",)), "IA3")])
def test_bad_peft_settings_say_what_to_change(kw, match):
  with pytest.raises(ValueError, match=match):
    _cfg(**kw)


def test_trainable_regex_that_matches_nothing_is_an_error():
  with pytest.raises(ValueError, match="matches no parameter path"):
    optimizer_lib.trainable_labels({"base": {"w": jnp.ones(2)}}, "^pefts/")


def test_one_train_step_changes_only_the_peft_params():
  c = lm_tiny_lora.get_config()
  c.model.n_layers = 1
  c.data.seq_len = 16
  c.train.global_batch_size = 8
  c.train.steps = 4
  c.optim.schedule, c.optim.warmup_steps = "constant", 0  # no zero-lr warmup step
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  parts = loop.build(c, mesh)
  assert parts["model"] is registry.get("lora")
  state = parts["init"]()
  before = jax.device_get(state["params"])
  tokens = np.random.default_rng(0).integers(3, 40, (8, 16)).astype(np.int32)
  batch = sharding.to_global_batch(
      {"tokens": tokens, "segment_ids": np.ones_like(tokens),
       "positions": np.broadcast_to(np.arange(16, dtype=np.int32), (8, 16)).copy()}, mesh)
  for i in range(2):  # B = 0 at init: A gets a gradient from the second step on
    state, _ = parts["train_step"](state, batch, jax.random.key_data(jax.random.key(i)))
  after = jax.device_get(state["params"])
  for b, a in zip(jax.tree.leaves(before["base"]), jax.tree.leaves(after["base"])):
    np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(a, b) for b, a in zip(jax.tree.leaves(before["peft"]),
                                                      jax.tree.leaves(after["peft"]))]
  assert all(changed), changed
