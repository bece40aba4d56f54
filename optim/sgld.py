r"""SGLD: stochastic gradient Langevin dynamics as an optax transform (Welling & Teh, ICML 2011),
with the pSGLD RMSprop preconditioner (Li, Chen, Carlson, Carin, AAAI 2016, arXiv:1512.07666) and
cyclical step sizes (Zhang et al., cSG-MCMC, ICLR 2020, arXiv:1902.03932).

Posterior ``p(theta | x_1..N) ∝ p(theta) prod_i p(x_i | theta)``. One step with step size ``h``:

    theta <- theta + (h/2) (N grad mean_{i in batch} log p(x_i|theta) + grad log p(theta))
                   + sqrt(h T) xi,                      xi ~ N(0, I)

**Gradient convention.** ``update`` takes the gradient of the *per-datum potential*

    loss(theta) = mean_{i in batch} -log p(x_i|theta) - log p(theta) / N

i.e. the usual mean training loss plus the prior divided by ``num_data``, and returns
``-(h/2) N g + sqrt(h T) xi``; ``optax.apply_updates`` then performs the step above. A Gaussian
prior ``N(0, sigma^2 I)`` is ``optax.chain(optax.add_decayed_weights(1 / (N sigma^2)), sgld(...))``.
``num_data=N`` rescales the mean to the full-data sum, the scaling the Langevin noise is matched to.

Welling & Teh's ``Delta theta = (eps/2)(...) + N(0, eps)`` is this update with ``h = eps``;
blackjax's ``sgld`` writes ``theta + s grad + sqrt(2 T s) xi``, i.e. ``step_size = s = h/2``.
The stationary law of the Euler scheme on a Gaussian target of variance ``v`` has variance
``T v / (1 - h / (4 v))``: exact as ``h -> 0`` (``tests/optim/test_sgld.py`` checks both).
``temperature=T`` samples ``p(theta|x)^(1/T)``; ``T=0`` is gradient descent on the potential.

**pSGLD** (``preconditioner="rmsprop"``): ``v <- a v + (1-a) g^2``, ``G = 1 / (sqrt(v) + eps)``,
``theta <- theta - (h/2) N G g + sqrt(h T G) xi``; the ``Gamma(theta)`` drift correction is
dropped, as the paper does in practice, which biases the stationary law (+11-15% variance on the
Gaussian test target). Defaults ``a = 0.99``, ``eps = 1e-5`` (SGMCMCJax's ``psgld``). ``v``
starts at 0: a chain started *at* a mode with full-batch gradients (``g = 0``) takes huge first
steps (``G = 1/eps``); start it elsewhere or use minibatch gradients.

**Randomness.** ``init`` turns ``seed`` into a raw ``uint32[2]`` PRNG key held in the state;
every ``update`` splits it, so the transform is a pure function of its state: it runs under
``jax.jit``, checkpoints with Orbax, and resumes with the same noise stream.

Unlike ``optax.noisy_sgd``, whose noise ``N(0, eta/(1+t)^gamma)`` is added to the gradient and
does not scale with the learning rate, this is Langevin-scaled: drift ``~h``, noise ``~sqrt(h)``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PRECONDITIONERS = (None, "rmsprop")


class SGLDState(NamedTuple):
  count: jnp.ndarray  # int32 step count (the schedule's argument)
  key: jnp.ndarray    # raw uint32[2] PRNG key, split on every update
  nu: Any             # pSGLD second-moment pytree, or None without a preconditioner


def _check(learning_rate, num_data, temperature, preconditioner, rmsprop_decay, rmsprop_eps):
  if not callable(learning_rate) and not isinstance(learning_rate, jax.core.Tracer):
    lr = float(learning_rate)
    if math.isnan(lr) or lr < 0:
      raise ValueError(f"learning_rate={learning_rate} must be a step size h >= 0 "
                       "(or an optax schedule of the step count).")
  if isinstance(num_data, bool) or not isinstance(num_data, numbers.Real) or not num_data > 0:
    raise ValueError(f"num_data={num_data!r} must be the number of training examples N > 0: the "
                     "mean minibatch gradient is multiplied by N to match the Langevin noise.")
  if isinstance(temperature, jax.core.Tracer):
    pass  # traced (e.g. vmapped over temperatures): checked by the caller
  elif math.isnan(float(temperature)) or float(temperature) < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (1 samples the posterior, 0 is "
                     "plain gradient descent on the potential).")
  if preconditioner not in PRECONDITIONERS:
    raise ValueError(f"preconditioner={preconditioner!r} must be one of {PRECONDITIONERS}.")
  if not 0.0 <= float(rmsprop_decay) < 1.0:
    raise ValueError(f"rmsprop_decay={rmsprop_decay} must lie in [0, 1) (pSGLD uses 0.99).")
  if not float(rmsprop_eps) > 0:
    raise ValueError(f"rmsprop_eps={rmsprop_eps} must be > 0 (pSGLD uses 1e-5).")


def sgld(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_data: int,
    temperature: float = 1.0,
    preconditioner: str | None = None,
    seed: int = 0,
    rmsprop_decay: float = 0.99,
    rmsprop_eps: float = 1e-5,
) -> optax.GradientTransformation:
  """Stochastic gradient Langevin dynamics (see the module docstring for the update).

  Args:
    learning_rate: step size ``h`` (a number, or an optax schedule of the step count, e.g.
      :func:`cyclical_schedule` or :func:`polynomial_schedule`).
    num_data: ``N``, the size of the training set; the incoming gradient is that of the mean
      per-example negative log-likelihood plus ``-log p(theta) / N``.
    temperature: ``T``; noise variance ``h T``. 1 samples the posterior.
    preconditioner: None (SGLD) or ``"rmsprop"`` (pSGLD).
    seed: seeds the PRNG key stored in the state.
    rmsprop_decay, rmsprop_eps: pSGLD's ``a`` and ``eps``.

  Returns:
    An ``optax.GradientTransformation`` whose updates are added to the parameters.
  """
  _check(learning_rate, num_data, temperature, preconditioner, rmsprop_decay, rmsprop_eps)
  n = float(num_data)

  def init_fn(params):
    nu = optax.tree.zeros_like(params) if preconditioner == "rmsprop" else None
    return SGLDState(count=jnp.zeros([], jnp.int32), key=jax.random.PRNGKey(seed), nu=nu)

  def update_fn(updates, state, params=None):
    del params
    h = learning_rate(state.count) if callable(learning_rate) else learning_rate
    key, sub = jax.random.split(state.key)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(sub, max(len(leaves), 1))
    noise = treedef.unflatten([jax.random.normal(k, g.shape, g.dtype)
                               for k, g in zip(keys, leaves)])
    if preconditioner == "rmsprop":
      nu = jax.tree.map(lambda v, g: rmsprop_decay * v + (1 - rmsprop_decay) * jnp.square(g),
                        state.nu, updates)
      precond = jax.tree.map(lambda v: 1.0 / (jnp.sqrt(v) + rmsprop_eps), nu)
    else:
      nu = None
      precond = jax.tree.map(lambda g: jnp.ones((), g.dtype), updates)
    new = jax.tree.map(
        lambda g, gi, xi: (-0.5 * h * n * gi * g + jnp.sqrt(h * temperature * gi) * xi
                           ).astype(g.dtype),
        updates, precond, noise)
    return new, SGLDState(count=optax.safe_increment(state.count), key=key, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def cyclical_schedule(init_value: float, total_steps: int, num_cycles: int) -> optax.Schedule:
  """cSG-MCMC step size (Zhang et al. 2020, Eq. 1): restarts ``num_cycles`` times.

      h_k = (h_0 / 2) (cos(pi mod(k, ceil(K/M)) / ceil(K/M)) + 1),   k = 0..K-1

  Large steps at the start of each cycle explore a new mode; samples are usually collected
  from the end of each cycle, where the step is small.
  """
  if not init_value >= 0:
    raise ValueError(f"init_value={init_value} must be >= 0.")
  if total_steps <= 0 or num_cycles <= 0 or num_cycles > total_steps:
    raise ValueError(f"need 0 < num_cycles={num_cycles} <= total_steps={total_steps}.")
  period = math.ceil(total_steps / num_cycles)

  def schedule(count):
    phase = jnp.mod(count, period) / period
    return 0.5 * init_value * (jnp.cos(jnp.pi * phase) + 1.0)

  return schedule


def polynomial_schedule(a: float, b: float = 1.0, gamma: float = 0.55) -> optax.Schedule:
  """Welling & Teh's decaying step ``h_t = a (b + t)^(-gamma)``, ``gamma in (0.5, 1]``.

  (A sum of steps that diverges and a sum of squares that converges: the noise then dominates
  the gradient noise and the chain converges to the posterior.)
  """
  if not a >= 0 or not b > 0:
    raise ValueError(f"need a >= 0 and b > 0, got a={a}, b={b}.")
  if not 0.5 < gamma <= 1.0:
    raise ValueError(f"gamma={gamma} must lie in (0.5, 1].")
  return lambda count: a * (b + count) ** (-gamma)
