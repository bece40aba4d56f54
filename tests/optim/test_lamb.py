"""LAMB: agreement with optax.lamb, a hand-computed step, exclusions, clipping, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optim import lamb as lamb_lib
from optim.lamb import lamb

NO_EXCLUDE = dict(exclude_from_weight_decay=(), exclude_from_layer_adaptation=())


# Test data comes from numpy: eager jax.random calls each compile, which dominates CPU time.
def _normal(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _mlp_params(seed, zero_bias=True):
  return {
      "layers": {"0": {"dense": {"kernel": _normal(seed, (6, 16), 0.5),
                                 "bias": jnp.zeros((16,)) if zero_bias else jnp.ones((16,))},
                       "mlp_norm": {"scale": jnp.ones((16,))}}},
      "head": {"kernel": _normal(seed + 1, (16, 3), 0.3)},
      "embed": {"embedding": _normal(seed + 2, (5, 6))},
  }


def _mlp_loss(params, x, y):
  h = x @ params["layers"]["0"]["dense"]["kernel"] + params["layers"]["0"]["dense"]["bias"]
  h = jnp.tanh(h) * params["layers"]["0"]["mlp_norm"]["scale"]
  logits = h @ params["head"]["kernel"] + (x @ params["embed"]["embedding"].T)[:, :3] * 0.1
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(y, 3), -1))


def _data(seed, n=64):
  return _normal(seed, (n, 6)), jnp.asarray(np.random.default_rng(seed).integers(0, 3, n))


def _first_update(tx, grads, params):
  """``tx.update`` from a fresh state, jitted (eager dispatch of the many small ops is slow)."""
  return jax.jit(tx.update)(grads, tx.init(params), params)


def _run(tx, params, x, y, steps):
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_mlp_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_optax_lamb_over_60_steps(weight_decay):
  params = _mlp_params(0)
  x, y = _data(1)
  ours = _run(lamb(3e-3, weight_decay=weight_decay, **NO_EXCLUDE), params, x, y, 60)
  ref = _run(optax.lamb(3e-3, weight_decay=weight_decay), params, x, y, 60)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, ref)
  # The run really moved the parameters (the comparison is not trivially of two copies of init).
  assert float(jnp.abs(ours["head"]["kernel"] - params["head"]["kernel"]).max()) > 1e-2


def test_matches_optax_lamb_decay_mask_when_only_decay_excluded():
  # exclude_from_layer_adaptation=() keeps the trust ratio on excluded leaves, like optax's mask.
  params = _mlp_params(0, zero_bias=False)
  x, y = _data(1)
  ours = _run(lamb(1e-2, weight_decay=0.1, exclude_from_layer_adaptation=()), params, x, y, 20)
  mask = lamb_lib.path_mask(lamb_lib.DEFAULT_EXCLUDE)
  ref = _run(optax.lamb(1e-2, weight_decay=0.1, mask=mask), params, x, y, 20)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, ref)


def _adam_direction(g, b1, b2, eps, bias_correction):
  m, v = (1 - b1) * g, (1 - b2) * g * g
  if bias_correction:
    m, v = m / (1 - b1), v / (1 - b2)
  return m / (np.sqrt(v) + eps)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_first_step_closed_form(bias_correction):
  rng = np.random.default_rng(0)
  x = {"w": rng.normal(size=(4, 5)) * 2, "v": rng.normal(size=(7,)) * 3}
  g = {"w": rng.normal(size=(4, 5)), "v": rng.normal(size=(7,))}
  lr, b1, b2, eps, wd = 0.1, 0.8, 0.95, 1e-3, 0.05
  tx = lamb(lr, b1, b2, eps, weight_decay=wd, bias_correction=bias_correction, **NO_EXCLUDE)
  cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
  updates, _ = _first_update(tx, cast(g), cast(x))
  for k in x:
    u = _adam_direction(g[k], b1, b2, eps, bias_correction) + wd * x[k]
    ratio = np.linalg.norm(x[k]) / np.linalg.norm(u)
    np.testing.assert_allclose(updates[k], -lr * ratio * u, rtol=2e-5)
    assert abs(ratio - 1) > 0.05  # the per-leaf ratio matters in this check


def test_exclusions_get_plain_adam_without_decay():
  params = _mlp_params(2, zero_bias=False)
  x, y = _data(3)
  grads = jax.jit(jax.grad(_mlp_loss))(params, x, y)
  lr, wd = 1e-2, 0.3
  ours, _ = _first_update(lamb(lr, weight_decay=wd), grads, params)
  adam, _ = _first_update(optax.adam(lr, eps=1e-6), grads, params)
  full, _ = _first_update(optax.lamb(lr, weight_decay=wd), grads, params)
  excluded = {"layers/0/dense/bias", "layers/0/mlp_norm/scale"}
  flat = lambda t: {lamb_lib.leaf_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  ours, adam, full = flat(ours), flat(adam), flat(full)
  assert set(ours) == excluded | {"layers/0/dense/kernel", "head/kernel", "embed/embedding"}
  for name in ours:
    ref = adam[name] if name in excluded else full[name]
    np.testing.assert_allclose(ours[name], ref, rtol=1e-6, atol=1e-8, err_msg=name)
    if name in excluded:  # and it really differs from what LAMB would have done there
      assert not np.allclose(ours[name], full[name], rtol=1e-3)


def test_default_patterns_on_nnx_state_paths():
  from flax import nnx

  class Block(nnx.Module):

    def __init__(self, rngs):
      self.q_proj = nnx.Linear(4, 4, rngs=rngs)
      self.attn_norm = nnx.RMSNorm(4, rngs=rngs)
      self.embed = nnx.Embed(10, 4, rngs=rngs)

  _, state = nnx.split(Block(nnx.Rngs(0)), nnx.Param)
  mask = lamb_lib.path_mask(lamb_lib.DEFAULT_EXCLUDE)(state)
  got = {lamb_lib.leaf_path(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert got == {"attn_norm/scale/value": False, "q_proj/bias/value": False,
                 "q_proj/kernel/value": True, "embed/embedding/value": True}


def test_trust_clip_bounds():
  lo, hi, lr = 0.5, 2.0, 1.0
  g = {"big": jnp.full((3, 3), 1.0), "small": jnp.full((4,), -1.0), "mid": jnp.full((2,), 1.0)}
  x = {"big": jnp.full((3, 3), 10.0), "small": jnp.full((4,), 0.01), "mid": jnp.full((2,), 1.2)}
  updates, _ = _first_update(lamb(lr, trust_clip=(lo, hi), **NO_EXCLUDE), g, x)
  adam_step = jax.tree.map(lambda a: a / (jnp.abs(a) + 1e-6), g)  # first bias-corrected step
  ratio = {k: float(jnp.linalg.norm(updates[k]) / jnp.linalg.norm(adam_step[k])) for k in g}
  assert ratio["big"] == pytest.approx(hi, rel=1e-5)   # raw ratio 10: clipped down
  assert ratio["small"] == pytest.approx(lo, rel=1e-5)  # raw ratio 0.01: clipped up
  assert ratio["mid"] == pytest.approx(1.2, rel=1e-4)  # inside the bounds: unchanged
  # Without clipping the raw ratios come through.
  unclipped, _ = _first_update(lamb(lr, **NO_EXCLUDE), g, x)
  assert float(jnp.linalg.norm(unclipped["big"]) / 3.0) == pytest.approx(10.0, rel=1e-4)


@pytest.mark.parametrize("trust_clip", [None, (2.0, 5.0)])
def test_zero_norm_leaves_have_ratio_one(trust_clip):
  x = {"zero_param": jnp.zeros((3,)), "zero_grad": jnp.ones((3,))}
  g = {"zero_param": jnp.array([1.0, -2.0, 0.5]), "zero_grad": jnp.zeros((3,))}
  updates, _ = _first_update(lamb(0.1, trust_clip=trust_clip, **NO_EXCLUDE), g, x)
  adam = g["zero_param"] / (jnp.abs(g["zero_param"]) + 1e-6)
  np.testing.assert_allclose(updates["zero_param"], -0.1 * adam, rtol=1e-4)  # ratio 1, unclipped
  np.testing.assert_array_equal(updates["zero_grad"], 0.0)
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


def test_mu_dtype():
  params = {"w": jnp.ones((4, 4))}
  for bc in (True, False):
    state = lamb(1e-3, mu_dtype=jnp.bfloat16, bias_correction=bc).init(params)
    assert state[0].mu["w"].dtype == jnp.bfloat16 and state[0].nu["w"].dtype == jnp.float32


def _sharded_params_and_grads(seed):
  params = {"a": {"kernel": _normal(seed, (16, 32))},
            "b": {"kernel": _normal(seed + 1, (32, 8)), "bias": _normal(seed + 2, (8,))},
            "c": {"kernel": _normal(seed + 3, (8, 24))}}
  grads = [jax.tree.map(lambda p, i=i: _normal(seed + 10 + i, p.shape), params) for i in range(3)]
  return params, grads


def test_sharded_updates_match_single_device():
  params, grads = _sharded_params_and_grads(5)
  tx = lamb(1e-2, weight_decay=0.01, trust_clip=(0.0, 10.0), exclude_from_layer_adaptation=())

  def run(params, grads, step_fn):
    state = tx.init(params)
    for g in grads:
      params, state = step_fn(params, state, g)
    return params

  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  single = run(jax.device_put(params, jax.devices()[0]), grads, jax.jit(step))

  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("fsdp", "tensor"))
  specs = {"a": {"kernel": P("fsdp", "tensor")}, "b": {"kernel": P("tensor", "fsdp"), "bias": P("fsdp")},
           "c": {"kernel": P(None, ("fsdp", "tensor"))}}
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  sharded_params = jax.device_put(params, shardings)
  sharded_grads = [jax.device_put(g, shardings) for g in grads]
  assert len(sharded_params["a"]["kernel"].addressable_shards) == 8
  multi = run(sharded_params, sharded_grads, jax.jit(step))
  assert multi["c"]["kernel"].sharding.is_equivalent_to(shardings["c"]["kernel"], 2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), multi, single)


def test_gradient_accumulation_equals_full_batch_update():
  params = _mlp_params(7)
  x, y = _data(8, n=64)
  tx = lamb(1e-2, weight_decay=0.01)
  grad_fn = jax.jit(jax.grad(_mlp_loss))
  full_grad = grad_fn(params, x, y)
  micro = [grad_fn(params, x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
  mean_grad = jax.tree.map(lambda *g: sum(g) / len(g), *micro)
  full_updates, _ = _first_update(tx, full_grad, params)
  mean_updates, _ = _first_update(tx, mean_grad, params)
  # optax.MultiSteps accumulates 4 microbatch grads and applies LAMB once on their mean.
  acc = optax.MultiSteps(tx, every_k_schedule=4)
  acc_update = jax.jit(acc.update)
  state = acc.init(params)
  for i, g in enumerate(micro):
    acc_updates, state = acc_update(g, state, params)
    if i < 3:
      assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(acc_updates))
  for got in (mean_updates, acc_updates):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), got,
                 full_updates)


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.1), "b2"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(trust_clip=(2.0, 1.0)), "lower bound exceeds"),
    (dict(trust_clip=(-1.0, 1.0)), "lower bound"),
    (dict(trust_clip=(1.0,)), "pair"),
    (dict(exclude_from_weight_decay="bias"), "single string"),
    (dict(exclude_from_layer_adaptation=("(",)), "invalid regular expression"),
])
def test_bad_hyperparameters_raise(kwargs, match):
  kwargs = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(ValueError, match=match):
    lamb(**kwargs)


def test_schedule_learning_rate_is_accepted():
  tx = lamb(optax.linear_schedule(0.0, 1e-2, 10), **NO_EXCLUDE)
  params = {"w": jnp.ones((3,))}
  updates, _ = _first_update(tx, {"w": jnp.ones((3,))}, params)
  np.testing.assert_array_equal(updates["w"], 0.0)  # the schedule starts at 0
