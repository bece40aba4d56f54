"""Walking any model for post-training quantization, without knowing its architecture.

What PTQ needs from a model is generic, so it is found rather than declared:

* **Blocks**: the first ``nnx.List`` of modules that contain ``Linear`` layers (a
  transformer's ``layers``); a model without one is a single block. Blocks run one after the
  other; each is called with the previous block's output first and the same other arguments
  as block 0 (positions, segment ids, ...), and returns its output first (a tuple is fine).
  This is the assumption GPTQ's and AutoGPTQ's layer-by-layer drivers make.
* **Linears** of a block: every :class:`models.layers.Linear` inside it, in the order the
  block calls them. Linears called on the *same* input array form a group (q/k/v; gate/up).
* **Proxy scope** (AdaDim's "enclosing sub-block"): the parent module of a group's linears
  when the group reads that parent's own input (q/k/v read the attention's input, so they are
  scored at the attention output; gate/up at the MLP output); otherwise the linear's own
  output (o_proj, down_proj).

How: modules of an ``nnx.merge``-d copy are temporarily replaced by *taps*, small modules that
record or substitute their inner module's inputs and outputs. Nothing in the model carries a
quantization hook. Calibration batches run in chunks of sequences (bounded memory); the
jitted pieces are cached per block graph, so every block of a model reuses them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from models import functional
from models.layers import Linear

Path = tuple


class _Stop(Exception):
  """Raised by a tap to end a forward pass early, carrying what it caught."""

  def __init__(self, value):
    super().__init__("tap")
    self.value = value


class _Tap(nnx.Module):
  """Calls ``on_call(inner, args, kwargs)`` in place of ``inner(*args, **kwargs)``."""

  def __init__(self, inner, on_call: Callable):
    self.inner = inner
    self.on_call = on_call

  def __call__(self, *args, **kwargs):
    return self.on_call(self.inner, args, kwargs)


def _get(module, path: Path):
  for key in path:
    module = module[key] if isinstance(module, nnx.List) else getattr(module, key)
  return module


def _set(module, path: Path, value) -> None:
  parent = _get(module, path[:-1])
  if isinstance(parent, nnx.List):
    parent[path[-1]] = value
  else:
    setattr(parent, path[-1], value)


def _modules(module) -> list[tuple[Path, Any]]:
  return [(tuple(p), m) for p, m in nnx.iter_graph(module) if isinstance(m, nnx.Module)]


def linear_paths(module) -> list[Path]:
  """Paths of every ``Linear`` in ``module`` (graph order)."""
  return [p for p, m in _modules(module) if isinstance(m, Linear)]


def find_blocks(model) -> Path | None:
  """Path of the first ``nnx.List`` of modules holding Linears, or None (one block)."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.List) and len(node) and all(
        isinstance(b, nnx.Module) and linear_paths(b) for b in node):
      return tuple(path)
  return None


def kernel_path(linear: Path) -> Path:
  """Where a Linear's kernel sits in the block's params dict."""
  return tuple(linear) + ("kernel",)


def get_param(params, path: Path):
  for key in path:
    params = params[key]
  return params


def set_param(params, path: Path, value):
  """A copy of ``params`` (sharing untouched subtrees) with the leaf at ``path`` replaced."""
  if not path:
    return value
  out = dict(params)
  out[path[0]] = set_param(params[path[0]], path[1:], value)
  return out


def _first(out):
  return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------------------------
# The model's blocks and their inputs.


def block_inputs(graphdef, params, forward: Callable, batch, blocks: Path | None):
  """``(x, ctx)``: block 0's first argument and its other arguments ``(args, kwargs)``.

  Runs ``forward(model, batch)`` eagerly until block 0 is called (only what comes before it:
  the embedding). With ``blocks=None`` the whole model is the block: x is its input.
  """
  model = functional.merge(graphdef, params)

  def catch(inner, args, kwargs):
    raise _Stop((args, kwargs))

  if blocks is None:
    model = _Tap(model, catch)
  else:
    _set(model, blocks + (0,), _Tap(_get(model, blocks + (0,)), catch))
  try:
    forward(model, batch)
  except _Stop as stop:
    args, kwargs = stop.value
    return args[0], (args[1:], kwargs)
  raise ValueError("the forward pass never called the model's first block "
                   f"({'.'.join(map(str, blocks))}.0); pass the forward that runs it.")


def block_params_list(params, blocks: Path | None) -> list:
  if blocks is None:
    return [params]
  seq = get_param(params, blocks)
  return [seq[i] for i in sorted(seq)]


def with_blocks(params, blocks: Path | None, new_blocks: list):
  if blocks is None:
    return new_blocks[0]
  return set_param(params, blocks, {i: b for i, b in enumerate(new_blocks)})


def block_graphdefs(graphdef, params, blocks: Path | None) -> list:
  if blocks is None:
    return [graphdef]
  return [nnx.graphdef(b) for b in _get(functional.merge(graphdef, params), blocks)]


# --------------------------------------------------------------------------------------------
# The structure of one block: its linears in call order, their groups and proxy scopes.


@dataclasses.dataclass(frozen=True)
class LinearGroup:
  """Linears called on the same input, in call order; ``scope``: the parent module path whose
  output scores them (AdaDim's proxy), or None to score each at its own output."""
  linears: tuple[Path, ...]
  scope: Path | None


def block_structure(block_graphdef, block_params, x, ctx) -> list[LinearGroup]:
  """Traces the block once (no FLOPs: ``jax.eval_shape``) and records who reads what."""
  calls = []  # (kind, path, id of the input array)
  abstract = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)

  def probe(p, x, ctx):
    block = functional.merge(block_graphdef, p)
    linears = linear_paths(block)
    parents = {lp[:-1] for lp in linears}
    for path in sorted((parents | set(linears)) - {()}, key=len, reverse=True):  # inner first
      kind = "linear" if path in linears else "parent"

      def on_call(inner, args, kwargs, kind=kind, path=path):
        calls.append((kind, path, id(args[0])))
        return inner(*args, **kwargs)
      _set(block, path, _Tap(_get(block, path), on_call))
    calls.append(("parent", (), id(x)))
    args, kwargs = ctx
    return _first(block(x, *args, **kwargs))

  jax.eval_shape(probe, abstract(block_params), abstract(x), abstract(ctx))
  parent_input = {}
  for kind, path, ident in calls:
    if kind == "parent":
      parent_input.setdefault(path, ident)
  groups, seen = [], set()
  order = [(path, ident) for kind, path, ident in calls if kind == "linear"]
  for path, ident in order:
    if path in seen:
      continue
    members = tuple(p for p, i in order if i == ident and p not in seen)
    seen.update(members)
    parent = path[:-1]
    scope = parent if parent_input.get(parent) == ident else None
    groups.append(LinearGroup(members, scope))
  missing = set(linear_paths(functional.merge(block_graphdef, block_params))) - seen
  if missing:
    raise ValueError(f"the block never calls the linears {sorted(missing)}; they cannot be "
                     "calibrated.")
  return groups


# --------------------------------------------------------------------------------------------
# Jitted pieces of one block, applied in chunks of sequences.


class BlockRunner:
  """The pure functions PTQ needs of one block graph, over ``[N, ...]`` calibration arrays.

  ``ctx`` is block 0's ``(args, kwargs)`` beyond x; its arrays whose leading dim is N are
  chunked together with x, the rest passed whole.
  """

  def __init__(self, block_graphdef, ctx, num_samples: int, *, chunk: int = 16):
    self.chunk, self.n = int(chunk), int(num_samples)
    leaves, self.ctx_def = jax.tree.flatten(ctx)
    self.ctx_leaves = [jnp.asarray(a) for a in leaves]
    self.per_sample = [a.ndim > 0 and a.shape[0] == self.n for a in self.ctx_leaves]
    self._fns = _jitted(block_graphdef, self.ctx_def)

  def _map(self, fn, *arrays, **static):
    outs = []
    for i in range(0, self.n, self.chunk):
      ctx = [a[i:i + self.chunk] if s else a for a, s in zip(self.ctx_leaves, self.per_sample)]
      args = [a[i:i + self.chunk] for a in arrays]
      outs.append(fn(*args, ctx, **static))
    return jax.tree.map(lambda *c: jnp.concatenate(c), *outs)

  def output(self, p, x):
    """The block's output (its next block's input)."""
    return self._map(functools.partial(self._fns["output"], p), x)

  def inputs(self, p, x, linears: tuple[Path, ...]):
    """``{linear: input}`` for ``linears`` when the block runs with params ``p``."""
    return self._map(functools.partial(self._fns["inputs"], p), x, linears=tuple(linears))

  def scope_output(self, p, x, inp, scope: Path):
    """The output of sub-module ``scope`` when it is called with ``inp`` (instead of what
    the block would pass it) and its other arguments as in the block."""
    return self._map(functools.partial(self._fns["scope"], p), x, inp, scope=tuple(scope))


@functools.lru_cache(maxsize=64)
def _jitted(block_graphdef, ctx_def):
  """The block's jitted pieces, cached per block graph (every transformer layer shares one)."""

  def call(block, x, ctx):
    args, kwargs = jax.tree.unflatten(ctx_def, ctx)
    return block(x, *args, **kwargs)

  def output(p, x, ctx):
    return _first(call(functional.merge(block_graphdef, p), x, ctx))

  def inputs(p, x, ctx, *, linears):
    # Everything after the last wanted linear is dead code, which XLA drops.
    block = functional.merge(block_graphdef, p)
    got = {}
    for lp in linears:
      _set(block, lp, _Tap(_get(block, lp), functools.partial(_record, got, lp)))
    call(block, x, ctx)
    return {lp: got[lp] for lp in linears}

  def scope(p, x, inp, ctx, *, scope):
    block = functional.merge(block_graphdef, p)
    if not scope:  # the block itself: run it on inp
      return output(p, inp, ctx)

    def substitute(inner, args, kwargs):
      raise _Stop(_first(inner(inp, *args[1:], **kwargs)))
    _set(block, scope, _Tap(_get(block, scope), substitute))
    try:
      call(block, x, ctx)
    except _Stop as stop:
      return stop.value
    raise ValueError(f"the block never called {scope}.")

  return {"output": jax.jit(output), "inputs": jax.jit(inputs, static_argnames="linears"),
          "scope": jax.jit(scope, static_argnames="scope")}


def _record(got, path, inner, args, kwargs):
  got[path] = args[0]
  return inner(*args, **kwargs)
