"""Optimizer registry and schedules: names resolve to the right optax transforms, errors list
the valid choices, schedules follow their formulas."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from optim import registry, sso


def _one_update(tx, params, grads):
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


PARAMS = {"dense": {"kernel": jnp.full((2, 3), 0.5), "bias": jnp.ones((3,))}}
GRADS = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3) - 2, "bias": jnp.array([1.0, -1, 2])}}


def test_unknown_name_lists_available():
  with pytest.raises(ValueError, match=r"unknown optimizer 'x'; available: adamw, coat_adamw, lamb, sgd, sgld, sso"):
    registry.get_optimizer("x", 1e-3)


def test_unknown_hparam_lists_accepted():
  with pytest.raises(ValueError, match=r"'sgd' does not take \['b2'\]; it accepts: momentum"):
    registry.get_optimizer("sgd", 0.1, b2=0.9)


def test_negative_learning_rate_raises():
  with pytest.raises(ValueError, match="learning_rate=-1"):
    registry.get_optimizer("adamw", -1)


def test_duplicate_registration_raises():
  with pytest.raises(ValueError, match="already registered"):
    registry.register("lamb")(lambda lr: None)


def test_register_custom_factory():
  name = "test_only_scale"
  registry.register(name)(lambda learning_rate, factor=2.0: optax.scale(-learning_rate * factor))
  try:
    updates = _one_update(registry.get_optimizer(name, 0.1, factor=3.0), PARAMS, GRADS)
    np.testing.assert_allclose(updates["dense"]["bias"], -0.3 * GRADS["dense"]["bias"], rtol=1e-6)
    assert name in registry.available()
  finally:
    del registry._FACTORIES[name]  # keep the global registry as other tests expect it


@pytest.mark.parametrize("name, hparams, reference", [
    ("adamw", dict(b1=0.8, weight_decay=0.1), optax.adamw(1e-2, b1=0.8, weight_decay=0.1)),
    ("sgd", dict(momentum=0.9), optax.sgd(1e-2, momentum=0.9)),
    ("lamb", dict(exclude_from_weight_decay=(), exclude_from_layer_adaptation=()),
     optax.lamb(1e-2)),
])
def test_names_build_the_matching_optax_transform(name, hparams, reference):
  ours = _one_update(registry.get_optimizer(name, 1e-2, **hparams), PARAMS, GRADS)
  ref = _one_update(reference, PARAMS, GRADS)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sgd_weight_decay_adds_lambda_p():
  ours = _one_update(registry.get_optimizer("sgd", 0.1, weight_decay=0.5), PARAMS, GRADS)
  np.testing.assert_allclose(ours["dense"]["kernel"],
                             -0.1 * (GRADS["dense"]["kernel"] + 0.5 * PARAMS["dense"]["kernel"]))


def test_adamw_exclusion_by_path():
  tx = registry.get_optimizer("adamw", 1e-2, weight_decay=0.5,
                              exclude_from_weight_decay=(r"(^|/)bias$",))
  ours = _one_update(tx, PARAMS, GRADS)
  plain = _one_update(optax.adam(1e-2), PARAMS, GRADS)
  decayed = _one_update(optax.adamw(1e-2, weight_decay=0.5), PARAMS, GRADS)
  np.testing.assert_allclose(ours["dense"]["bias"], plain["dense"]["bias"], rtol=1e-6)
  np.testing.assert_allclose(ours["dense"]["kernel"], decayed["dense"]["kernel"], rtol=1e-6)


def test_cosine_schedule_values():
  s = registry.schedule_from_config("cosine", 1.0, warmup_steps=10, total_steps=110)
  assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(60)) == pytest.approx(0.5, abs=1e-6)  # half way through the cosine
  assert float(s(110)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_poly_schedule_is_warmup_then_polynomial_decay(power):
  s = registry.schedule_from_config("poly", 2.0, warmup_steps=4, total_steps=24, power=power,
                                    end_lr_ratio=0.1)
  assert float(s(2)) == pytest.approx(1.0)
  for step in (4, 9, 14, 24, 30):
    frac = min(step - 4, 20) / 20
    assert float(s(step)) == pytest.approx(0.2 + 1.8 * (1 - frac) ** power, rel=1e-5), step


def test_constant_schedule_without_warmup():
  s = registry.schedule_from_config("constant", 0.3, warmup_steps=0, total_steps=0)
  assert float(s(0)) == pytest.approx(0.3) and float(s(10**6)) == pytest.approx(0.3)


@pytest.mark.parametrize("args, kwargs, match", [
    (("linear", 1.0, 0, 10), {}, "unknown schedule 'linear'; available: constant, cosine, poly"),
    (("cosine", 1.0, 10, 10), {}, "total_steps=10 must exceed warmup_steps=10"),
    (("cosine", -1.0, 0, 10), {}, "lr=-1.0"),
    (("poly", 1.0, -1, 10), {}, "warmup_steps=-1"),
    (("poly", 1.0, 0, 10), {"power": 0.0}, "power=0.0"),
    (("poly", 1.0, 0, 10), {"end_lr_ratio": 2.0}, "end_lr_ratio=2.0"),
])
def test_bad_schedule_settings_raise(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    registry.schedule_from_config(*args, **kwargs)


def test_optimizer_from_config_lamb_with_poly_schedule():
  cfg = ml_collections.ConfigDict(dict(
      name="lamb", lr=1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0, warmup_steps=2,
      schedule="poly", power=1.0, exclude_from_weight_decay=(), exclude_from_layer_adaptation=()))
  tx = registry.optimizer_from_config(cfg, total_steps=10)
  ref = optax.lamb(registry.schedule_from_config("poly", 1e-2, 2, 10))
  state, ref_state, params = tx.init(PARAMS), ref.init(PARAMS), PARAMS
  for _ in range(4):
    u, state = tx.update(GRADS, state, params)
    r, ref_state = ref.update(GRADS, ref_state, params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(r)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
    params = optax.apply_updates(params, u)


def test_optimizer_from_config_sgd_ignores_adam_fields_but_not_typos():
  base = dict(name="sgd", lr=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0,
              schedule="constant")
  tx = registry.optimizer_from_config(base, total_steps=10)
  np.testing.assert_allclose(_one_update(tx, PARAMS, GRADS)["dense"]["bias"],
                             -0.1 * GRADS["dense"]["bias"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"does not take \['momentun'\]"):
    registry.optimizer_from_config({**base, "momentun": 0.9}, total_steps=10)
  with pytest.raises(ValueError, match="lacks 'lr'"):
    registry.optimizer_from_config({"name": "sgd"}, total_steps=10)


def test_sso_from_config():
  opt = registry.optimizer_from_config(
      dict(name="sso", lr=2.0, m=4, eta_schedule="inv_sqrt", armijo={"c": 0.1}, schedule="constant"),
      total_steps=10)
  assert isinstance(opt, sso.SSO)
  with pytest.raises(ValueError, match="warmup_steps=0"):
    registry.optimizer_from_config(dict(name="sso", lr=2.0, warmup_steps=5), total_steps=10)
  with pytest.raises(ValueError, match="m=0"):
    registry.optimizer_from_config(dict(name="sso", lr=2.0, m=0), total_steps=10)
