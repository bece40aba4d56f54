"""The train loop: ``train_and_evaluate(config, workdir)``, for any task, importable from a
notebook.

Sections follow big_vision's train.py: Validate, Mesh, Input, Model + optimizer, Checkpoint,
Loop, Export. The loop owns the mesh, sharded init, checkpoints with the iterator state,
preemption, metrics, the eval cadence and profiling; the task (:mod:`train.tasks`) owns the
model, data, loss and eval metrics; the strategy (:mod:`train.strategies`) owns the step.
``train/main.py`` only parses flags and calls this.

Nothing is written before the whole config is validated (task, mesh, batch divisibility,
optimizer schedule, data), so a corrected command never meets a half-created workdir.

``export_checkpoint(workdir)`` turns any checkpoint of a run (finished or not) into an export,
for the tools that read exports (``quant/``, ``infer/``, reports).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from configs import common as config_defaults
from core import checkpoint as ckpt_lib
from core import sharding as sharding_lib
from models import registry
from optim import coat as coat_lib
from train import metrics as metrics_lib
from train import optimizer as optimizer_lib
from train import step as step_lib
from train import strategies, tasks

# Config sections that must match to resume a run from an existing workdir.
_RUN_IDENTITY = ("task", "model", "data", "optim", "seed")
_RUN_IDENTITY_TRAIN = ("global_batch_size", "microbatches")
RESTORE_RECORD = "restore.json"  # which train.restore_step an earlier run already applied


class IncompatibleWorkdirError(ValueError):
  pass


def _identity(cfg_dict: dict) -> dict:
  ident = {k: cfg_dict.get(k) for k in _RUN_IDENTITY}
  ident["task"] = ident["task"] or "lm"
  ident["train"] = {k: cfg_dict.get("train", {}).get(k) for k in _RUN_IDENTITY_TRAIN}
  return json.loads(json.dumps(ident, default=str))


_MISSING = object()


def _differing_keys(old, new, default, path=""):
  """Dotted keys whose values differ. A key one side lacks counts as its default value, so
  a run saved before a config key existed still resumes when the key keeps its default."""
  if not (isinstance(old, dict) and isinstance(new, dict)):
    return [] if old == new else [path or "<root>"]
  default = default if isinstance(default, dict) else {}
  diffs = []
  for k in sorted(set(old) | set(new)):
    d = default.get(k, _MISSING)
    o, n = old.get(k, d), new.get(k, d)
    if o is _MISSING or n is _MISSING:  # a key with no default that only one side has
      diffs.append(f"{path}{k}")
    else:
      diffs += _differing_keys(o, n, d, f"{path}{k}.")
  return [p.rstrip(".") for p in diffs]


def _identity_defaults(cfg_dict: dict) -> dict:
  """Default values of the identity keys: configs/common.py's, and the model's dataclass."""
  default = _identity(json.loads(config_defaults.base_config().to_json_best_effort()))
  module = registry.get(str(cfg_dict.get("model", {}).get("name", registry.DEFAULT)))
  default["model"] = {f.name: f.default for f in dataclasses.fields(module.Config)
                      if f.default is not dataclasses.MISSING}
  return json.loads(json.dumps(default, default=str))


def _run_identity_diffs(old_cfg: dict, new_cfg: dict) -> list[str]:
  return _differing_keys(_identity(old_cfg), _identity(new_cfg), _identity_defaults(new_cfg))


def check_workdir(config, workdir: Path, *, overwrite: bool) -> None:
  """Refuses a workdir that holds a run with another config (writes nothing)."""
  cfg_file = workdir / "config.json"
  if workdir.exists() and not workdir.is_dir():
    raise IncompatibleWorkdirError(f"--workdir {workdir} is a file; pass a directory.")
  if not cfg_file.exists() or overwrite:
    return
  old, new = json.loads(cfg_file.read_text()), json.loads(config.to_json_best_effort())
  diffs = _run_identity_diffs(old, new)
  if diffs:
    raise IncompatibleWorkdirError(
        f"workdir {workdir} holds a run with a different config ({', '.join(diffs)} "
        "differ), so it cannot be resumed. Use another --workdir, or pass --overwrite "
        "to delete that run and start afresh.")


def prepare_workdir(config, workdir: Path, *, overwrite: bool) -> None:
  """Creates the workdir and writes config.json; with ``overwrite`` deletes an older run."""
  check_workdir(config, workdir, overwrite=overwrite)
  cfg_file = workdir / "config.json"
  new = json.loads(config.to_json_best_effort())
  if cfg_file.exists() and overwrite and \
      _run_identity_diffs(json.loads(cfg_file.read_text()), new):
    logging.warning("--overwrite: deleting the previous run in %s", workdir)
    for name in ("checkpoints", "checkpoints_superseded", "metrics.jsonl", "tensorboard",
                 "export", "samples", RESTORE_RECORD):
      p = workdir / name
      if p.is_dir():
        shutil.rmtree(p)
      elif p.exists():
        p.unlink()
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = cfg_file.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(new, indent=2))
  tmp.replace(cfg_file)


def _state_shardings(abstract_state, param_shardings, tx, mesh):
  repl = sharding_lib.replicated(mesh)
  # A moment stored as FP8 groups (optim.coat) is a small pytree per parameter: its parts
  # shard like that parameter (metadata dims that do not divide are replicated).
  # A frozen parameter's slot in a masked optimizer (optim.trainable) is an empty MaskedNode.
  is_groups = lambda x: isinstance(x, coat_lib.Fp8Groups)
  is_masked = lambda x: isinstance(x, optax.MaskedNode)

  def like(s, sh):
    return s if is_masked(s) else sharding_lib.sharding_like(sh, s) if is_groups(s) else sh

  opt = optax.tree_map_params(tx, like, abstract_state["opt_state"], param_shardings,
                              transform_non_params=lambda _: repl,
                              is_leaf=lambda x: is_groups(x) or is_masked(x))
  out = {"step": repl, "params": param_shardings, "opt_state": opt}
  for extra in set(abstract_state) - set(out):  # strategy state (SSO counters): small
    out[extra] = jax.tree.map(lambda _: repl, abstract_state[extra])
  return out


def check_batch(config, mesh) -> None:
  """The global batch must split over hosts, data-parallel devices and microbatches."""
  gbs = int(config.train.global_batch_size)
  micro = int(config.train.microbatches)
  dp = sharding_lib.data_parallel_size(mesh)
  if gbs < 1 or micro < 1:
    raise ValueError(f"train.global_batch_size={gbs} and train.microbatches={micro} must be "
                     ">= 1.")
  if gbs % jax.process_count():
    raise ValueError(f"train.global_batch_size={gbs} must divide over {jax.process_count()} "
                     "hosts.")
  if gbs % micro:
    raise ValueError(f"train.global_batch_size={gbs} is not divisible by train.microbatches="
                     f"{micro}.")
  if (gbs // micro) % dp:
    raise ValueError(
        f"a (micro)batch of {gbs // micro} examples (train.global_batch_size={gbs} / "
        f"train.microbatches={micro}) does not split over the mesh's data x fsdp = {dp} "
        f"devices ({dict(mesh.shape)}); use a global batch size that is a multiple of "
        f"{dp * micro}, or change --config.mesh.data/fsdp/tensor.")


def build(config, mesh, task=None):
  """Task, model, optimizer, strategy, jitted init/steps and shardings for ``config``."""
  task = task or tasks.build(config)
  total_steps = int(config.train.steps)
  tx, schedule, strategy_name, settings = optimizer_lib.make_optimizer(config.optim,
                                                                       total_steps)
  strategy = strategies.get(strategy_name)
  model, cfg = task.model, task.model_cfg
  graphdef, abstract_params = model.abstract_params(cfg)
  rules = sharding_lib.rules_from_config(config.mesh)
  param_sh = sharding_lib.tree_shardings(model.logical_axes(cfg), abstract_params, mesh, rules)

  def init_fn():
    _, params = model.init(cfg, seed=int(config.seed))
    return {**step_lib.init_state(params, tx), **strategy.extra_state(params)}

  abstract_state = jax.eval_shape(init_fn)
  state_sh = _state_shardings(abstract_state, param_sh, tx, mesh)
  repl = sharding_lib.replicated(mesh)
  batch_sh = sharding_lib.batch_sharding(mesh)
  train_step = strategy.make_step(task, graphdef, tx, schedule, settings,
                                  int(config.train.microbatches))
  eval_step = step_lib.make_eval_step(task, graphdef)

  def with_rules(fn):
    def wrapped(*args):
      with sharding_lib.axis_rules(rules, mesh):
        return fn(*args)
    return wrapped

  return dict(
      task=task, model=model, model_cfg=cfg, graphdef=graphdef, tx=tx, schedule=schedule,
      rules=rules, abstract_state=abstract_state, state_shardings=state_sh,
      batch_sharding=batch_sh,
      init=jax.jit(init_fn, out_shardings=state_sh),
      train_step=jax.jit(with_rules(train_step), in_shardings=(state_sh, batch_sh, repl),
                         out_shardings=(state_sh, repl), donate_argnums=0),
      eval_step=jax.jit(with_rules(eval_step), in_shardings=(param_sh, batch_sh),
                        out_shardings=repl),
  )


def compile_train_step(config, mesh, task=None):
  """Lowers and compiles the train step for ``mesh`` (no data, nothing materialized).

  Returns ``(compiled, parts, seconds)``; ``mesh`` may hold compile-only devices
  (:func:`core.targets.compile_devices`): then the compiler is the target's."""
  task = task or tasks.build(config)
  check_batch(config, mesh)
  parts = build(config, mesh, task)
  gbs = int(config.train.global_batch_size)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=parts["batch_sharding"])
           for k, v in task.batch_spec(gbs).items()}
  state = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding_lib.replicated(mesh))
  t0 = time.perf_counter()
  compiled = parts["train_step"].lower(state, batch, rng).compile()
  return compiled, parts, time.perf_counter() - t0


def compile_only(config, mesh) -> dict:
  """Lowers and compiles the train step (no data, nothing materialized); memory analysis."""
  compiled, parts, seconds = compile_train_step(config, mesh)
  mem = compiled.memory_analysis()
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(parts["abstract_state"]["params"]))
  gbs = int(config.train.global_batch_size)
  out = {"compile_s": round(seconds, 1), "num_params": num_params,
         "devices": mesh.size, "mesh": dict(mesh.shape), "global_batch_size": gbs}
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    out[field] = int(getattr(mem, field, 0) or 0)
  out["per_device_total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                   + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def format_memory_plan(out: dict, hbm_bytes: int | None = None) -> str:
  """The compile-only memory analysis in GB per device, and whether it fits ``hbm_bytes``
  (the device's memory; unknown for CPU devices, which have no fixed budget)."""
  gb = lambda b: b / 1e9
  state = out["argument_size_in_bytes"]
  total = out["per_device_total_bytes"]
  lines = [f"{out['num_params']:,} params on a mesh {out['mesh']} ({out['devices']} devices), "
           f"global batch {out['global_batch_size']}; compiled in {out['compile_s']:.1f} s",
           f"per device: train state (params + optimizer) {gb(state):.2f} GB, temporaries "
           f"{gb(out['temp_size_in_bytes']):.2f} GB, total {gb(total):.2f} GB"]
  if hbm_bytes:
    fits = total <= hbm_bytes
    lines.append(f"{'fits' if fits else 'does not fit'} in {gb(hbm_bytes):.1f} GB per device")
  else:
    lines.append("fits: unknown (these devices report no memory limit; compile for a real "
                 "target to know)")
  return "\n".join(lines)


def evaluate_checkpoint(config, workdir: str | Path, *, devices=None, say=print) -> dict:
  """Evaluates the newest checkpoint of ``workdir`` (or ``train.restore_step``); writes
  nothing. ``{"step", **eval metrics}``."""
  workdir = Path(workdir).absolute()
  task = tasks.build(config)
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  check_batch(config, mesh)
  if not (workdir / "checkpoints").is_dir():
    raise ValueError(f"--workdir {workdir} has no checkpoints/ to evaluate; train first, or "
                     "pass the workdir of a run.")
  parts = build(config, mesh, task)
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
  try:
    wanted = config.train.get("restore_step", None)
    step = ckpt.latest_step() if wanted is None else int(wanted)
    if step is None:
      raise ValueError(f"--workdir {workdir} holds no finished checkpoint to evaluate.")
    target = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
    state, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  local_bs = int(config.train.global_batch_size) // jax.process_count()
  metrics = evaluate(task, parts["eval_step"], state["params"], task.eval_batches(local_bs),
                     mesh)
  say(f"step {step} | {task.describe_eval(metrics)}")
  return {"step": step, **metrics}


def _fetch(metrics):
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def evaluate(task, eval_step, params, batches, mesh) -> dict[str, float]:
  """The task's eval metrics over ``batches`` (host-local batches, summed on device)."""
  tot = None
  for batch in batches:
    out = _fetch(eval_step(params, sharding_lib.to_global_batch(batch, mesh)))
    tot = out if tot is None else {k: tot[k] + out[k] for k in tot}
  if tot is None:
    raise ValueError("the evaluation split produced no batches; check data.eval_split and "
                     "train.eval_batches.")
  return task.eval_metrics(tot)


def train_and_evaluate(config, workdir: str | Path, *, overwrite: bool = False, devices=None,
                       stop_after: int | None = None, say=None) -> dict:
  """Trains per ``config``; resumes from ``workdir`` if it holds a checkpoint.

  ``stop_after``: stop (after saving) once this step is reached — used by tests to simulate an
  interrupted run. Returns the last train and eval metrics, and ``"status"``: "complete",
  "already_complete", "preempted" or "stopped".
  """
  workdir = Path(workdir).absolute()
  is_main = jax.process_index() == 0
  if say is None:
    def say(msg):
      if is_main:
        print(msg, flush=True)

  # -------------------------------------------------------------------------- Validate ------
  # Everything that can be checked without compiling, before anything is written.
  task = tasks.build(config)
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  check_batch(config, mesh)
  total_steps = int(config.train.steps)
  optimizer_lib.make_optimizer(config.optim, total_steps)
  task.validate(int(config.train.global_batch_size))
  for key in ("log_every", "eval_every", "checkpoint_every"):
    if int(config.train[key]) < 1:
      raise ValueError(f"train.{key}={config.train[key]} must be >= 1.")
  for key in ("snapshot_start", "snapshot_every"):
    if int(config.train.get(key, 0)) < 0:
      raise ValueError(f"train.{key}={config.train[key]} must be >= 0 (0: no snapshots).")
  check_workdir(config, workdir, overwrite=overwrite)
  gbs = int(config.train.global_batch_size)
  local_bs = gbs // jax.process_count()
  train_iter = task.train_iterator(local_bs, int(config.seed))  # data errors surface here

  # ------------------------------------------------------------------------------ Mesh ------
  prepare_workdir(config, workdir, overwrite=overwrite)
  say(f"mesh {dict(mesh.shape)} over {mesh.size} {jax.default_backend()} device(s)")

  # ------------------------------------------------------------ Model + optimizer ------
  parts = build(config, mesh, task)
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(parts["abstract_state"]["params"]))
  say(f"task {config.get('task', 'lm')}: {config.model.get('name', registry.DEFAULT)} with "
      f"{num_params:,} params; global batch {gbs}")

  # ------------------------------------------------------------------------ Checkpoint ------
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=int(config.train.keep_checkpoints),
                               async_save=bool(config.train.async_checkpoint))
  restore_step = _restore_step(config, workdir, ckpt, say)
  if restore_step is not None:
    target = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
    state, data_state = ckpt.restore(restore_step, target)
    if data_state:
      train_iter.set_state(data_state)
    if is_main:  # rows logged after the checkpoint by the interrupted run are redone
      metrics_lib.truncate_after(workdir, restore_step)
      for moved in ckpt.set_aside_after(restore_step):
        say(f"moved newer checkpoint aside (not deleted): {moved}")
    say(f"resumed from checkpoint step {restore_step} in {ckpt.directory}")
  else:
    say("initializing parameters...")
    state = parts["init"]()
  step = int(jax.device_get(state["step"]))
  last_good = restore_step
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)

  def eval_now():
    return evaluate(task, parts["eval_step"], state["params"],
                    task.eval_batches(local_bs), mesh)

  if step >= total_steps:  # a finished run: report it, keep the export in step with it
    ckpt.close()
    writer.close()
    say(f"run already complete at step {step} (train.steps={total_steps}); evaluating it")
    last_eval = eval_now()
    say(f"step {step} | {task.describe_eval(last_eval)}")
    _export(config, workdir, task, state, step, say)
    return {"step": step, "status": "already_complete", **last_eval}

  # ------------------------------------------------------------------------------ Loop ------
  preempted = {"flag": False}

  def on_sigterm(signum, frame):  # save and exit on preemption
    del signum, frame
    preempted["flag"] = True
  prev_handler = None
  try:
    prev_handler = signal.signal(signal.SIGTERM, on_sigterm)
  except ValueError:  # not the main thread (e.g. a notebook worker)
    pass

  progress = metrics_lib.Progress(total_steps, step)
  base_rng = jax.random.key_data(jax.random.key(int(config.seed)))
  prof_start = int(config.train.profile_start)
  prof_end = prof_start + int(config.train.profile_steps)
  log_every, eval_every = int(config.train.log_every), int(config.train.eval_every)
  ckpt_every = int(config.train.checkpoint_every)
  snap_start = int(config.train.get("snapshot_start", 0))
  snap_every = int(config.train.get("snapshot_every", 0))
  last_train, last_eval = {}, {}
  pending = []  # device metrics not yet fetched: fetching syncs, so it happens at log steps
  status = "complete"

  def check_finite(step_, m):
    bad = [k for k in ("loss", "grad_norm", "param_norm") if not math.isfinite(m.get(k, 0.0))]
    if bad:
      raise FloatingPointError(
          f"{', '.join(bad)} became {m[bad[0]]} at step {step_}. Stopped without saving this "
          f"state; the last good checkpoint is "
          f"{'step ' + str(last_good) + ' in ' + str(ckpt.directory) if last_good else 'none'}."
          " Lower --config.optim.lr, raise --config.optim.warmup_steps, or check the data.")

  def flush_pending():
    for s, m in pending:
      fm = _fetch(m)
      check_finite(s, fm)
      last_train.update(fm)
      if s % log_every == 0 or s == total_steps:
        writer.write(s, fm)
    pending.clear()

  try:
    first = True
    while step < total_steps:
      if step == prof_start and int(config.train.profile_steps) > 0:
        jax.profiler.start_trace(str(workdir / "profile"))
      batch = next(train_iter)
      gbatch = sharding_lib.to_global_batch(batch, mesh)
      rng = jax.random.fold_in(jax.random.wrap_key_data(base_rng), step)
      if first:
        say("compiling the train step (the first step includes compilation)...")
        first = False
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, m = parts["train_step"](state, gbatch, jax.random.key_data(rng))
      step += 1
      progress.add(*task.throughput(batch))
      pending.append((step, m))
      if step == prof_end and int(config.train.profile_steps) > 0:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      if step % log_every == 0 or step == total_steps:
        flush_pending()
        say(progress.line(step, last_train))
      if step % eval_every == 0 or step == total_steps:
        last_eval = eval_now()
        writer.write(step, last_eval)
        say(f"step {step} | {task.describe_eval(last_eval)}")
      if snap_every and step >= snap_start and (step - snap_start) % snap_every == 0:
        flush_pending()  # never keep a non-finite sample
        _snapshot(workdir, task, state, step)
      stop_now = (stop_after is not None and step >= stop_after) or preempted["flag"] or \
          ckpt.reached_preemption(step)
      if step % ckpt_every == 0 or step == total_steps or stop_now:
        flush_pending()  # never save a state whose loss or params are not finite
        ckpt.save(step, state, train_iter.get_state())
        last_good = step
      if stop_now:
        status = "preempted" if preempted["flag"] or ckpt.reached_preemption(step) \
            else "stopped"
        say(f"stopping at step {step} after saving a checkpoint ({status}); rerun the same "
            "command to resume")
        break
    flush_pending()
  finally:
    ckpt.close()
    writer.close()
    if prev_handler is not None:
      signal.signal(signal.SIGTERM, prev_handler)

  if last_eval and step >= total_steps:
    extra, line = task.final_metrics(last_eval)
    last_eval.update(extra)
    say(line)

  # ---------------------------------------------------------------------------- Export ------
  if step >= total_steps:
    _export(config, workdir, task, state, step, say)
  return {"step": step, "status": status, **last_train, **last_eval}


SAMPLES = "samples"  # WORKDIR/samples/step_<N>: parameter snapshots, each an export


def _snapshot(workdir: Path, task, state, step: int) -> Path:
  """The params at ``step`` as an export in ``WORKDIR/samples/step_<step>`` (a resumed run
  that redoes the step writes the same params again, so replacing it is safe)."""
  return ckpt_lib.save_export(workdir / SAMPLES / f"step_{step:08d}",
                              jax.device_get(state["params"]),
                              model=registry.to_dict(task.model, task.model_cfg),
                              dtype="float32", extra={**task.export_extra(), "trained_steps": step},
                              overwrite=True)


def snapshots(workdir: str | Path) -> list[Path]:
  """The parameter snapshots a run kept (``train.snapshot_every``), oldest first."""
  d = Path(workdir) / SAMPLES
  return sorted(p for p in d.glob("step_*") if ckpt_lib.is_export(p)) if d.is_dir() else []


def _restore_step(config, workdir: Path, ckpt, say) -> int | None:
  """The checkpoint to resume from: ``train.restore_step`` once, else the latest.

  ``train.restore_step=N`` moves the checkpoints after N aside; a later rerun that still
  carries the flag must not move that run's new checkpoints aside again, so the step applied
  is recorded in ``WORKDIR/restore.json`` and not applied twice.
  """
  latest = ckpt.latest_step()
  wanted = config.train.get("restore_step", None)
  if wanted is None:
    return latest
  wanted = int(wanted)
  record = workdir / RESTORE_RECORD
  applied = json.loads(record.read_text()).get("restore_step") if record.exists() else None
  if applied == wanted and latest is not None and latest > wanted:
    say(f"train.restore_step={wanted} was already applied by an earlier run (see {record}); "
        f"resuming from the latest checkpoint, step {latest}. Drop the flag, or delete "
        f"{record} to go back to step {wanted} again.")
    return latest
  if wanted not in ckpt.all_steps():
    raise ckpt_lib.CheckpointError(
        f"train.restore_step={wanted}: no such checkpoint in {ckpt.directory}; available "
        f"steps: {ckpt.all_steps() or 'none'}.")
  tmp = record.with_suffix(".json.tmp")
  tmp.write_text(json.dumps({"restore_step": wanted, "time": time.time()}))
  tmp.replace(record)
  return wanted


def _export(config, workdir: Path, task, state, step: int, say) -> None:
  """Params-only export of the finished run to ``WORKDIR/export`` (replacing an older one)."""
  if not bool(config.train.export):
    return
  path = workdir / "export"
  if ckpt_lib.is_export(path):
    meta = ckpt_lib.read_export_metadata(path)
    if meta.get("trained_steps") == step and "quantization" not in meta:
      return  # already the newest checkpoint's export
  ckpt_lib.save_export(path, jax.device_get(state["params"]),
                       model=registry.to_dict(task.model, task.model_cfg),
                       dtype=str(config.train.export_dtype),
                       extra={**task.export_extra(), "trained_steps": step},
                       overwrite=True)
  say(f"exported the params of step {step} to {path}")


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a run was started with (``WORKDIR/config.json``)."""
  cfg_file = Path(workdir) / "config.json"
  if not cfg_file.is_file():
    raise FileNotFoundError(f"{Path(workdir)} has no config.json, so it is not a training "
                            "workdir; pass the --workdir of a train/main.py run.")
  return ml_collections.ConfigDict(json.loads(cfg_file.read_text()))


def export_checkpoint(workdir: str | Path, out: str | Path | None = None, *,
                      step: int | None = None, dtype: str | None = None,
                      overwrite: bool = False, devices=None) -> Path:
  """Writes checkpoint ``step`` (default: the latest) of the run in ``workdir`` as an export.

  The state is restored with :func:`build` from the run's own ``config.json`` and the params
  go through :func:`core.checkpoint.save_export`, so the export is the one the loop would
  have written at that step (model config, the task's metadata such as the tokenizer,
  ``trained_steps``), plus ``configured_steps`` (``train.steps``: more than ``trained_steps``
  for an unfinished run). ``out`` defaults to ``WORKDIR/export_step<step>``; ``dtype`` to the
  run's ``train.export_dtype``; ``overwrite`` replaces an existing export there (nothing
  else is ever replaced). Returns the export's path.
  """
  workdir = Path(workdir).absolute()
  config = run_config(workdir)
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.is_dir():
    raise ckpt_lib.CheckpointError(f"{workdir} has no checkpoints/ directory; train first.")
  ckpt = ckpt_lib.Checkpointer(ckpt_dir, async_save=False)
  try:
    steps = ckpt.all_steps()
    if step is None:
      if not steps:
        raise ckpt_lib.CheckpointError(f"{ckpt_dir} holds no checkpoint; train first.")
      step = steps[-1]
    elif int(step) not in steps:
      raise ckpt_lib.CheckpointError(f"no checkpoint of step {step} in {ckpt_dir}; available "
                                     f"steps: {steps or 'none'}.")
    step = int(step)
    dtype = str(dtype or config.train.export_dtype)
    if dtype not in ckpt_lib.EXPORT_DTYPES:
      raise ValueError(f"export dtype must be one of {ckpt_lib.EXPORT_DTYPES}, got {dtype!r}.")
    out = Path(out) if out is not None else workdir / f"export_step{step}"
    # Before the (slow) restore: the destination must be one an export may be written to.
    ckpt_lib.check_export_destination(out, kind="dense", overwrite=overwrite, sources=[workdir])
    task = tasks.build(config)
    parts = build(config, sharding_lib.make_mesh(config.mesh, devices), task)
    target = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
    state, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  return ckpt_lib.save_export(
      out, jax.device_get(state["params"]), model=registry.to_dict(task.model, task.model_cfg),
      dtype=dtype, overwrite=overwrite, sources=[workdir],
      extra={**task.export_extra(), "trained_steps": step,
             "configured_steps": int(config.train.steps)})
