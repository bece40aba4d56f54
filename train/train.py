"""Training loop: ``train_and_evaluate(config, workdir)``, importable from a notebook.

Sections follow big_vision's train.py: Setup, Mesh, Input, Model + optimizer, Checkpoint,
Steps, Loop, Export. ``train/main.py`` only parses flags and calls this.
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from models import partitioning, transformer
from train import checkpoint as ckpt_lib
from train import metrics as metrics_lib
from train import optimizer as optimizer_lib
from train import sharding as sharding_lib
from train import step as step_lib

# Config sections that must match to resume a run from an existing workdir.
_RUN_IDENTITY = ("model", "data", "optim", "seed")
_RUN_IDENTITY_TRAIN = ("global_batch_size", "microbatches")


class IncompatibleWorkdirError(ValueError):
  pass


def model_config(config) -> transformer.ModelConfig:
  return transformer.ModelConfig.from_dict(config.model.to_dict())


def _identity(cfg_dict: dict) -> dict:
  ident = {k: cfg_dict.get(k) for k in _RUN_IDENTITY}
  ident["train"] = {k: cfg_dict.get("train", {}).get(k) for k in _RUN_IDENTITY_TRAIN}
  return json.loads(json.dumps(ident, default=str))


def prepare_workdir(config, workdir: Path, *, overwrite: bool) -> None:
  """Creates the workdir; refuses one that holds a run with another config."""
  cfg_file = workdir / "config.json"
  new = json.loads(config.to_json_best_effort())
  if cfg_file.exists():
    old = json.loads(cfg_file.read_text())
    if _identity(old) != _identity(new):
      if not overwrite:
        diffs = [k for k in _identity(new) if _identity(old).get(k) != _identity(new).get(k)]
        raise IncompatibleWorkdirError(
            f"workdir {workdir} holds a run with a different config (sections {diffs} "
            "differ), so it cannot be resumed. Use another --workdir, or pass --overwrite "
            "to delete that run and start afresh.")
      logging.warning("--overwrite: deleting the previous run in %s", workdir)
      for name in ("checkpoints", "metrics.jsonl", "tensorboard", "export"):
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
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract_state["opt_state"], param_shardings,
                              transform_non_params=lambda _: repl)
  out = {"step": repl, "params": param_shardings, "opt_state": opt}
  for extra in set(abstract_state) - set(out):  # strategy counters (SSO): small, replicated
    out[extra] = jax.tree.map(lambda _: repl, abstract_state[extra])
  return out


def build(config, mesh):
  """Model, optimizer, jitted init/steps and shardings for ``config`` on ``mesh``."""
  cfg = model_config(config)
  total_steps = int(config.train.steps)
  tx, schedule, sso = optimizer_lib.make_optimizer(config.optim, total_steps)
  graphdef, abstract_params = transformer.abstract_params(cfg)
  rules = sharding_lib.rules_from_config(config.mesh)
  param_sh = sharding_lib.param_shardings(transformer.logical_axes(cfg), abstract_params, mesh,
                                          rules)

  def init_fn():
    _, params = transformer.init(cfg, seed=int(config.seed))
    state = step_lib.init_state(params, tx)
    if sso is not None:
      from optim import sso as sso_lib  # pylint: disable=g-import-not-at-top
      state["sso"] = sso_lib.init(params)
    return state

  abstract_state = jax.eval_shape(init_fn)
  state_sh = _state_shardings(abstract_state, param_sh, tx, mesh)
  repl = sharding_lib.replicated(mesh)
  batch_sh = sharding_lib.batch_sharding(mesh)
  if sso is None:
    train_step = step_lib.make_train_step(graphdef, tx, schedule=schedule,
                                          microbatches=int(config.train.microbatches))
  else:
    if int(config.train.microbatches) != 1:
      raise ValueError("optim.name='sso' takes whole batches (its inner steps re-run the "
                       "model on the batch); set --config.train.microbatches=1.")
    train_step = step_lib.make_sso_train_step(graphdef, tx, sso, schedule=schedule)

  def with_rules(fn):
    def wrapped(*args):
      with partitioning.axis_rules(rules, mesh):
        return fn(*args)
    return wrapped

  return dict(
      model_cfg=cfg, graphdef=graphdef, tx=tx, schedule=schedule, rules=rules,
      abstract_state=abstract_state, state_shardings=state_sh, batch_sharding=batch_sh,
      init=jax.jit(init_fn, out_shardings=state_sh),
      train_step=jax.jit(with_rules(train_step), in_shardings=(state_sh, batch_sh, repl),
                         out_shardings=(state_sh, repl), donate_argnums=0),
      wrap=with_rules,
  )


def compile_only(config, mesh) -> dict:
  """Lowers and compiles the train step (no data, nothing materialized); memory analysis."""
  parts = build(config, mesh)
  b, l = int(config.train.global_batch_size), int(config.data.seq_len)
  batch = {k: jax.ShapeDtypeStruct((b, l), jnp.int32, sharding=parts["batch_sharding"])
           for k in ("tokens", "segment_ids", "positions")}
  state = ckpt_lib.abstract_like(parts["abstract_state"], parts["state_shardings"])
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding_lib.replicated(mesh))
  t0 = time.perf_counter()
  compiled = parts["train_step"].lower(state, batch, rng).compile()
  mem = compiled.memory_analysis()
  out = {"compile_s": time.perf_counter() - t0, "num_params": parts["model_cfg"].num_params(),
         "devices": mesh.size, "mesh": dict(mesh.shape)}
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    out[field] = int(getattr(mem, field, 0) or 0)
  out["per_device_total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                   + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def _fetch(metrics):
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def evaluate(eval_step, params, batches, mesh) -> dict[str, float]:
  tot = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
  for batch in batches:
    out = _fetch(eval_step(params, sharding_lib.to_global_batch(batch, mesh)))
    for k in tot:
      tot[k] += out[k]
  loss = tot["nll"] / max(tot["tokens"], 1.0)
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
          "eval_bits_per_byte": tot["nll"] / math.log(2) / max(tot["bytes"], 1.0),
          "eval_tokens": tot["tokens"]}


def train_and_evaluate(config, workdir: str | Path, *, overwrite: bool = False, devices=None,
                       stop_after: int | None = None) -> dict:
  """Trains per ``config``; resumes from ``workdir`` if it holds a checkpoint.

  ``stop_after``: stop (after saving) once this step is reached — used by tests to simulate an
  interrupted run. Returns the last train and eval metrics.
  """
  from data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  from data import tokenizers  # pylint: disable=g-import-not-at-top

  # ----------------------------------------------------------------------------- Setup ------
  workdir = Path(workdir).absolute()
  is_main = jax.process_index() == 0
  def say(msg):
    if is_main:
      print(msg, flush=True)
  prepare_workdir(config, workdir, overwrite=overwrite)
  total_steps = int(config.train.steps)

  # ------------------------------------------------------------------------------ Mesh ------
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  say(f"mesh {dict(mesh.shape)} over {mesh.size} {jax.default_backend()} device(s)")

  # ----------------------------------------------------------------------------- Input ------
  tok = tokenizers.get_tokenizer(config.data.tokenizer)
  cfg = model_config(config)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer {config.data.tokenizer!r} has {tok.vocab_size} tokens but "
                     f"model.vocab_size={cfg.vocab_size}; raise --config.model.vocab_size.")
  gbs = int(config.train.global_batch_size)
  if gbs % jax.process_count():
    raise ValueError(f"global_batch_size={gbs} must divide over {jax.process_count()} hosts.")
  local_bs = gbs // jax.process_count()
  seq_len = int(config.data.seq_len)

  def train_iterator():
    return data_pipeline.make_lm_iterator(config.data, split=config.data.train_split,
                                          seq_len=seq_len, batch_size=local_bs,
                                          seed=int(config.seed), shuffle=True)

  def eval_batches():
    it = data_pipeline.make_lm_iterator(config.data, split=config.data.eval_split,
                                        seq_len=seq_len, batch_size=local_bs,
                                        seed=int(config.seed), shuffle=False, num_epochs=1)
    n = int(config.train.eval_batches)
    for i, batch in enumerate(it):
      if 0 <= n <= i:
        break
      yield batch

  train_iter = train_iterator()  # before compiling anything: data errors surface first

  # ------------------------------------------------------------ Model + optimizer ------
  parts = build(config, mesh)
  repl = sharding_lib.replicated(mesh)
  # Bytes per token id, zero for ids the tokenizer never emits (model vocab is padded).
  token_bytes = np.zeros(cfg.vocab_size, np.float32)
  token_bytes[:tok.vocab_size] = tok.token_bytes
  eval_step = jax.jit(parts["wrap"](step_lib.make_eval_step(parts["graphdef"], token_bytes)),
                      in_shardings=(parts["state_shardings"]["params"],
                                    parts["batch_sharding"]), out_shardings=repl)
  say(f"model: {cfg.num_params():,} params; global batch {gbs} x {seq_len} tokens")

  # ------------------------------------------------------------------------ Checkpoint ------
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=int(config.train.keep_checkpoints),
                               async_save=bool(config.train.async_checkpoint))
  restore_step = config.train.get("restore_step", None)
  restore_step = ckpt.latest_step() if restore_step is None else int(restore_step)
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
    state = parts["init"]()
  step = int(jax.device_get(state["step"]))
  last_good = restore_step
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)

  # ------------------------------------------------------------------------------ Loop ------
  preempted = {"flag": False}
  def on_sigterm(signum, frame):  # save and exit cleanly on preemption
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
  last_train, last_eval = {}, {}
  pending = []  # device metrics not yet fetched: fetching syncs, so it happens at log steps

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
    while step < total_steps:
      if step == prof_start and int(config.train.profile_steps) > 0:
        jax.profiler.start_trace(str(workdir / "profile"))
      batch = next(train_iter)
      gbatch = sharding_lib.to_global_batch(batch, mesh)
      rng = jax.random.fold_in(jax.random.wrap_key_data(base_rng), step)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, m = parts["train_step"](state, gbatch, jax.random.key_data(rng))
      step += 1
      progress.add_tokens(batch["tokens"].size * jax.process_count())
      pending.append((step, m))
      if step == prof_end and int(config.train.profile_steps) > 0:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      if step % log_every == 0 or step == total_steps:
        flush_pending()
        if is_main:
          print(progress.line(step, last_train), flush=True)
      if step % eval_every == 0 or step == total_steps:
        last_eval = evaluate(eval_step, state["params"], eval_batches(), mesh)
        writer.write(step, last_eval)
        if is_main:
          print(f"step {step} | eval loss {last_eval['eval_loss']:.4f} | "
                f"ppl {last_eval['eval_perplexity']:.2f} | "
                f"bits/byte {last_eval['eval_bits_per_byte']:.4f}", flush=True)
      stop_now = (stop_after is not None and step >= stop_after) or preempted["flag"] or \
          ckpt.reached_preemption(step)
      if step % ckpt_every == 0 or step == total_steps or stop_now:
        flush_pending()  # never save a state whose loss or params are not finite
        ckpt.save(step, state, train_iter.get_state())
        last_good = step
      if stop_now:
        say(f"stopping at step {step} after saving a checkpoint "
            f"({'preemption' if preempted['flag'] else 'stop_after'})")
        break
    flush_pending()
  finally:
    ckpt.close()
    writer.close()
    if prev_handler is not None:
      signal.signal(signal.SIGTERM, prev_handler)

  if last_eval and step >= total_steps:
    # The bar to beat: a model that ignores context scores the unigram entropy.
    h1 = data_pipeline.unigram_entropy(config.data, config.data.eval_split)
    last_eval["unigram_entropy"] = h1
    say(f"final validation loss {last_eval['eval_loss']:.4f} nats/token vs unigram entropy "
        f"{h1:.4f} nats/token of the validation split")

  # ---------------------------------------------------------------------------- Export ------
  if bool(config.train.export) and step >= total_steps:
    ckpt_lib.export_params(workdir / "export", jax.device_get(state["params"]),
                           model_config=cfg.to_dict(), dtype=str(config.train.export_dtype),
                           extra={"tokenizer": str(config.data.tokenizer),
                                  "trained_steps": step})
  return {"step": step, **last_train, **last_eval}
