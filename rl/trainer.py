r"""Asynchronous RL on one machine (AReaL, Fu et al., arXiv:2505.24298): the rollout engine,
the staleness-bounded controller and the learner on two device meshes, driven by a
deterministic schedule.

**Meshes.** The local devices are split: the first ``rl.rollout_devices`` (default half) hold
the rollout engine, the rest the learner; a new version goes from the learner's mesh to the
rollout's with ``jax.device_put`` (:meth:`rl.rollout.RolloutEngine.update_weights`).

**The schedule** (one process, one "tick" at a time, so a run is reproducible bit for bit):

1. *admit*: while the engine has a free slot and the controller's Eq. 3 gate allows, the next
   prompt starts (not while a non-interruptible engine waits to load new weights);
2. *decode*: one token for every running sequence; finished ones go to the reward service;
3. *train*: when the controller has a full batch (oldest first) the learner takes it; after
   ``rl.train_delay_steps`` more clock units (the simulated training time, during which the
   rollout keeps decoding) it runs the k PPO steps and publishes version ``i + 1``: the controller
   opens the gate, the engine interrupts its in-flight sequences and re-prefills them with
   the new weights (or, with ``rl.interruptible=False``, loads them once its sequences have
   finished: AReaL's "wait" baseline);
4. every ``rl.checkpoint_every`` versions: an Orbax checkpoint (params, optimizer state, and as
   JSON the controller, the in-flight trajectories with their slots, the batch in training).

**The clock** counts what the rollout device spends: 1 unit per tick (a decode step, or a tick
waiting for training) plus ``rl.prefill_cost`` units per prefill call (a new prompt, or the one
batched re-prefill of an interruption), charged on the next tick. Training runs beside it on
its own devices and takes ``train_delay_steps`` units. With ``prefill_cost = 0`` the clock is
the tick count. ``reports/areal.py`` sets both costs from measured CPU times (the metrics hold
the measured ``decode_s``, ``prefill_s`` and ``train_s``), so the clock is the time a two-device
run with these kernels would take, without the one-process overlap the CPU cannot show.

With ``eta = 0`` the gate admits a batch only after the previous one was trained on, no
sequence is ever in flight at a weight update, and the run equals :func:`run_synchronous`
(generate a batch, reward it, train, repeat) sample for sample and loss for loss.
A sample's staleness is ``i - v``: the trainer's version ``i`` minus the version that started
generating it.
"""
from __future__ import annotations

import collections
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from core import checkpoint
from data import tokenizers
from infer import engine as infer_engine
from models import registry, transformer
from rl import controller as controller_lib
from rl import learner as learner_lib
from rl import rollout
from rl.tasks import arith
from train import optimizer as optimizer_lib

METRICS = "metrics.jsonl"


# -- setup ---------------------------------------------------------------------------------------

def split_devices(rollout_devices: int = 0, train_devices: int = 0, devices=None):
  """``(rollout devices, training devices)``: the first ``rollout_devices`` local devices
  (0: half) and the next ``train_devices`` (0: the rest); one device is shared by both."""
  devices = list(devices if devices is not None else jax.local_devices())
  if len(devices) == 1:
    return devices, devices
  n = rollout_devices or len(devices) // 2
  m = train_devices or len(devices) - n
  if n < 0 or m < 0 or not 0 < n < n + m <= len(devices):
    raise ValueError(f"rl.rollout_devices={rollout_devices} and rl.train_devices="
                     f"{train_devices} must give each side at least one of the "
                     f"{len(devices)} local devices, without overlap.")
  return devices[:n], devices[n:n + m]


def load_problems(r) -> tuple[list[arith.Problem], list[arith.Problem]]:
  """``(training problems, held-out problems)``; held-out ones never appear in training."""
  ops = tuple(str(r.ops))
  if r.task_file:
    train = arith.load(r.task_file)
    if not train:
      raise ValueError(f"task file {r.task_file} holds no problems.")
  else:
    train = arith.generate(r.train_problems, seed=r.problem_seed, ops=ops,
                           min_digits=r.min_digits, max_digits=r.max_digits)
  seen = set(train)
  held_out = [p for p in arith.generate(r.eval_problems, seed=r.eval_seed, ops=ops,
                                        min_digits=r.min_digits, max_digits=r.max_digits)
              if p not in seen]
  return train, held_out


def init_policy(config):
  """``(model config, graphdef, params, tokenizer, tokenizer spec)``: the ``rl.init_export``
  (e.g. an SFT model) or a fresh ``config.model``."""
  if config.rl.init_export:
    if not checkpoint.is_export(config.rl.init_export):
      raise ValueError(f"rl.init_export={config.rl.init_export} is not an export (no "
                       "export.json there): train the SFT warm start first (configs/sft_arith.py"
                       "), or pass --config.rl.init_export= to start from a random model.")
    dec, tok, meta = infer_engine.load(config.rl.init_export)
    return dec.cfg, dec.graphdef, jax.device_get(dec.params), tok, meta.get("tokenizer", "byte")
  module, cfg = registry.from_dict(config.model.to_dict())
  if module is not transformer:
    raise ValueError(f"model.name={config.model.name!r}: RL needs a transformer LM.")
  graphdef, params = transformer.init(cfg, seed=config.seed)
  return cfg, graphdef, params, tokenizers.get_tokenizer(config.rl.tokenizer), config.rl.tokenizer


def prompt_tokens(tok, problem: arith.Problem) -> list[int]:
  return [tok.bos_id] + list(tok.encode(problem.prompt))


def completion_text(tok, trajectory: rollout.Trajectory) -> str:
  ids = trajectory.tokens
  if trajectory.finish_reason == "stop":
    ids = ids[:-1]
  return tok.decode(ids)


def check_config(config, num_problems: int) -> None:
  r = config.rl
  if int(r.eta) != r.eta or r.eta < 0:
    raise ValueError(f"rl.eta={r.eta} must be an integer >= 0: the staleness bound (0 is "
                     "synchronous RL).")
  for key in ("versions", "prompts_per_batch", "samples_per_prompt", "minibatches",
              "num_slots", "max_new_tokens", "token_budget", "micro_batches"):
    if int(r[key]) < 1:
      raise ValueError(f"rl.{key}={r[key]} must be >= 1.")
  if r.prompts_per_batch > num_problems:
    raise ValueError(f"rl.prompts_per_batch={r.prompts_per_batch} is larger than the "
                     f"{num_problems} training problems: lower it or add problems.")
  if r.train_delay_steps < 0:
    raise ValueError(f"rl.train_delay_steps={r.train_delay_steps} must be >= 0.")
  if not r.prefill_cost >= 0:
    raise ValueError(f"rl.prefill_cost={r.prefill_cost} must be >= 0 (clock units per prefill "
                     "call; 0: prefills are free).")


class Run:
  """Everything one RL run holds; :func:`run` and :func:`run_synchronous` drive it."""

  def __init__(self, config, *, reward_fn: Callable[[arith.Problem, str], float] = arith.reward):
    r = self.r = config.rl
    self.config, self.reward_fn = config, reward_fn
    self.problems, self.held_out = load_problems(r)
    check_config(config, len(self.problems))
    self.model_cfg, self.graphdef, init_params, self.tok, self.tokenizer_spec = \
        init_policy(config)
    self.n = int(r.samples_per_prompt)
    self.batch_size = int(r.prompts_per_batch) * self.n
    self.prompts = [p for p in self.problems for _ in range(self.n)]  # a group: n neighbours
    self.rollout_devices, self.train_devices = split_devices(r.rollout_devices, r.train_devices)
    max_prompt = max(len(prompt_tokens(self.tok, p)) for p in self.problems + self.held_out)
    vocab_limit = min(self.tok.vocab_size, self.model_cfg.vocab_size)
    stops = tuple(getattr(self.tok, "stop_ids", (self.tok.eos_id,)))
    common = dict(max_prompt_len=max_prompt, max_new_tokens=int(r.max_new_tokens),
                  stop_tokens=stops, vocab_limit=vocab_limit, devices=self.rollout_devices)
    params = init_params
    self.engine = rollout.RolloutEngine(self.model_cfg, self.graphdef, params,
                                        num_slots=int(r.num_slots), temperature=r.temperature,
                                        seed=config.seed, **common)
    self.eval_engine = rollout.RolloutEngine(self.model_cfg, self.graphdef, params,
                                             num_slots=int(r.num_slots), temperature=0.0,
                                             **common)
    # The policy as trained (the rollout temperature), on its own stream of keys.
    self.sampled_eval_engine = rollout.RolloutEngine(
        self.model_cfg, self.graphdef, params, num_slots=int(r.num_slots),
        temperature=r.temperature, seed=config.seed + 1_000_003, **common)
    tx, _, _, _ = optimizer_lib.make_optimizer(config.optim, int(r.versions * r.minibatches))
    self.learner = learner_lib.Learner(
        self.graphdef, params, tx, devices=self.train_devices, loss=r.loss,
        clip_eps=r.clip_eps, behav_weight_cap=r.behav_weight_cap, temperature=r.temperature,
        vocab_limit=vocab_limit, minibatches=int(r.minibatches),
        micro_batches=int(r.micro_batches), token_budget=int(r.token_budget),
        group_size=self.n)
    epochs = math.ceil((r.versions + r.eta + 1) * self.batch_size / len(self.prompts))
    self.controller = controller_lib.Controller(
        self.prompts, batch_size=self.batch_size, eta=int(r.eta), reward_fn=self.reward,
        reward_workers=int(r.reward_workers), epochs=epochs)

  def reward(self, problem, trajectory) -> float:
    """The verifier on the decoded completion (the stop token dropped)."""
    return self.reward_fn(problem, completion_text(self.tok, trajectory))

  def evaluate(self) -> dict:
    """Exact-match accuracy of the learner's params on the held-out problems: greedy
    (``eval_accuracy``) and at the rollout temperature, averaged over ``rl.eval_samples``
    samples per problem (``eval_sampled_accuracy``; 0 samples: not measured). Per problem,
    in held-out order, under ``eval_per_problem`` (for paired before/after comparisons)."""
    if not self.held_out:
      return {}
    out, per_problem = {}, {}
    k = int(self.r.eval_samples)
    for name, engine, n in (("eval_accuracy", self.eval_engine, 1),
                            ("eval_sampled_accuracy", self.sampled_eval_engine, k)):
      if n == 0:
        continue
      engine.update_weights(self.learner.params, engine.version + 1)
      problems = [p for p in self.held_out for _ in range(n)]
      trajs = engine.generate([(i, prompt_tokens(self.tok, p)) for i, p in enumerate(problems)])
      correct = np.array([arith.reward(p, completion_text(self.tok, t))
                          for p, t in zip(problems, trajs)]).reshape(len(self.held_out), n)
      out[name] = float(correct.mean())
      per_problem[name] = correct.mean(axis=1).round(4).tolist()
    return {**out, "eval_per_problem": per_problem}

  def train_on(self, batch, version: int) -> dict:
    """PPO on ``batch`` at trainer version ``version``; the metrics of the new version."""
    stale = collections.Counter(version - s.ticket.version for s in batch)
    m = self.learner.train(batch)
    return {"version": version + 1, "reward": float(np.mean([s.reward for s in batch])),
            **m, "staleness": {str(k): stale[k] for k in sorted(stale)},
            "interrupted_samples": sum(s.trajectory.interruptions > 0 for s in batch),
            "completion_tokens": sum(len(s.trajectory.tokens) for s in batch)}


def format_line(m: dict, total: int) -> str:
  stale = " ".join(f"{k}:{v}" for k, v in m["staleness"].items())
  line = (f"v {m['version']}/{total} | reward {m['reward']:.3f} | loss {m['loss']:+.4f} | "
          f"kl(behav||prox) {m['kl_behav_prox']:.2e} | clip {m['clip_frac']:.3f} | "
          f"staleness {stale} | {m['decode_steps']} decode steps | {m['wall_s']:.1f} s")
  if "eval_accuracy" in m:
    line += f" | held-out acc {m['eval_accuracy']:.3f}"
  if "eval_sampled_accuracy" in m:
    line += f", sampled {m['eval_sampled_accuracy']:.3f}"
  return line


# -- the synchronous reference -------------------------------------------------------------------

def run_synchronous(config, *, say: Callable[[str], None] = print,
                    reward_fn: Callable[[arith.Problem, str], float] = arith.reward) -> list[dict]:
  """Plain synchronous RL, no controller: generate a batch with the current weights, reward
  it, train on it, publish, repeat. Metrics per version (the reference for eta = 0)."""
  run_ = Run(config, reward_fn=reward_fn)
  out, start = [], time.perf_counter()
  for version in range(int(config.rl.versions)):
    uids = range(version * run_.batch_size, (version + 1) * run_.batch_size)
    tickets = [controller_lib.Ticket(u, u % len(run_.prompts), run_.prompts[u % len(run_.prompts)],
                                     version) for u in uids]
    trajs = run_.engine.generate([(t.uid, prompt_tokens(run_.tok, t.prompt)) for t in tickets])
    batch = [controller_lib.Sample(t, tr, run_.reward(t.prompt, tr))
             for t, tr in zip(tickets, trajs)]
    m = run_.train_on(batch, version)
    run_.engine.update_weights(run_.learner.params, version + 1)
    m.update(decode_steps=run_.engine.stats["decode_steps"],
             wall_s=time.perf_counter() - start)
    out.append(m)
    say(format_line(m, int(config.rl.versions)))
  return out


# -- the asynchronous schedule -------------------------------------------------------------------

def _sample_json(s: controller_lib.Sample) -> list:
  return [s.ticket.uid, s.ticket.prompt_index, s.ticket.version, s.trajectory.to_dict(),
          s.reward]


def _sample_from_json(run_: Run, d: list) -> controller_lib.Sample:
  uid, index, version, traj, reward = d
  return controller_lib.Sample(controller_lib.Ticket(uid, index, run_.prompts[index], version),
                               rollout.Trajectory.from_dict(traj), reward)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def _read_metrics(path: Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(config, workdir, *, say: Callable[[str], None] = print, overwrite: bool = False,
        reward_fn: Callable[[arith.Problem, str], float] = arith.reward) -> dict:
  """Trains ``rl.versions`` versions with the asynchronous schedule of the module docstring,
  writing ``WORKDIR/metrics.jsonl``, ``WORKDIR/checkpoints/`` and ``WORKDIR/export``; a rerun
  with the same workdir resumes from the newest checkpoint. Returns the last metrics."""
  workdir = Path(workdir).absolute()
  r = config.rl
  config_path, metrics_path = workdir / "config.json", workdir / METRICS
  wanted = json.loads(json.dumps(config.to_dict()))
  if config_path.exists() and json.loads(config_path.read_text()) != wanted:
    if not overwrite:
      raise ValueError(f"{workdir} holds a run with a different config ({config_path}); pass "
                       "--overwrite to start over there, or choose another --workdir.")
  if overwrite:
    for name in ("checkpoints", "export"):
      if (workdir / name).exists():
        shutil.rmtree(workdir / name)
    metrics_path.unlink(missing_ok=True)
  workdir.mkdir(parents=True, exist_ok=True)
  config_path.write_text(json.dumps(config.to_dict(), indent=1))
  run_ = Run(config, reward_fn=reward_fn)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=int(r.keep_checkpoints),
                                 async_save=False)
  engine, ctl, learner = run_.engine, run_.controller, run_.learner
  version, ticks, training, pending, elapsed = 0, 0, None, None, 0.0
  clock, prefills_charged = 0.0, 0
  timers = {"decode_s": 0.0, "prefill_s": 0.0, "train_s": 0.0}  # measured, this process
  tickets: dict[int, controller_lib.Ticket] = {}
  step = ckpt.latest_step()
  if step is not None:
    state, data = ckpt.restore(step, _abstract({"params": learner.params,
                                                "opt_state": learner.opt_state}))
    learner.params, learner.opt_state = state["params"], state["opt_state"]
    version, ticks, elapsed = data["version"], data["ticks"], data["wall_s"]
    # (checkpoints written before the clock existed: the clock was the tick count)
    clock = data.get("clock", float(ticks))
    prefills_charged = data.get("prefills_charged", data["engine_stats"].get("prefill_calls", 0))
    timers.update(data.get("timers", {}))
    engine.update_weights(learner.params, version)
    tickets = ctl.load_state_dict(data["controller"], rollout.Trajectory.from_dict)
    engine.restore([(rollout.Trajectory.from_dict(traj), slot)
                    for traj, slot in data["in_flight"]])
    engine.stats.update(data["engine_stats"])
    if data["training"] is not None:
      training = [data["training"]["countdown"],
                  [_sample_from_json(run_, s) for s in data["training"]["batch"]]]
    kept = [m for m in _read_metrics(metrics_path) if m["version"] <= version]
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
    say(f"resumed from checkpoint {step} (version {version})")
  last = (_read_metrics(metrics_path) or [{}])[-1]
  if version == 0 and not last:
    last = {"version": 0, **run_.evaluate()}
    with metrics_path.open("a") as f:
      f.write(json.dumps(last) + "\n")
    say(f"v 0 | held-out acc {last.get('eval_accuracy', float('nan')):.3f}, sampled "
        f"{last.get('eval_sampled_accuracy', float('nan')):.3f} ({len(run_.held_out)} problems)")

  def save():
    ctl.wait_rewards()
    slots = engine.slot_of()
    data = {"version": version, "ticks": ticks, "wall_s": elapsed + time.perf_counter() - t0,
            "clock": clock, "prefills_charged": prefills_charged, "timers": timers,
            "engine_stats": engine.stats,
            "controller": ctl.state_dict(rollout.Trajectory.to_dict),
            "in_flight": [[t.to_dict(), slots[t.uid]] for t in engine.in_flight()],
            "training": None if training is None else {
                "countdown": training[0], "batch": [_sample_json(s) for s in training[1]]}}
    ckpt.save(version, {"params": learner.params, "opt_state": learner.opt_state}, data)
    ckpt.wait()

  t0 = time.perf_counter()
  checkpoint_due = False
  while version < r.versions:
    ticks += 1
    t = time.perf_counter()
    while pending is None and engine.free_slots():  # 1. admit
      ticket = ctl.submit()
      if ticket is None:
        break
      tickets[ticket.uid] = ticket
      engine.add(ticket.uid, prompt_tokens(run_.tok, ticket.prompt))
    now = time.perf_counter()
    timers["prefill_s"] += now - t
    t = now
    for traj in engine.step():  # 2. decode
      ctl.finish(tickets.pop(traj.uid), traj)
    timers["decode_s"] += time.perf_counter() - t
    tick_cost = 1.0 + r.prefill_cost * (engine.stats["prefill_calls"] - prefills_charged)
    prefills_charged = engine.stats["prefill_calls"]
    clock += tick_cost
    if training is None:  # 3. train
      idle = not engine.in_flight() and pending is None
      batch = ctl.next_batch(timeout=None if idle and r.reward_workers else 0)
      if batch is not None:
        training = [int(r.train_delay_steps), batch]
      elif idle and not ctl.can_submit():
        raise RuntimeError(f"the run stalled at version {version}: no batch can be formed "
                           f"(controller stats {ctl.stats}).")
    if training is not None:
      if training[0] > 0:
        training[0] -= tick_cost
      else:
        t = time.perf_counter()
        m = run_.train_on(training[1], version)
        timers["train_s"] += time.perf_counter() - t
        training, version = None, version + 1
        ctl.publish(version)
        t = time.perf_counter()
        if r.interruptible:
          engine.update_weights(learner.params, version)
        else:
          pending = version
        timers["prefill_s"] += time.perf_counter() - t
        if version % r.eval_every == 0 or version == r.versions:
          m.update(run_.evaluate())
        m.update(ticks=ticks, clock=clock, decode_steps=engine.stats["decode_steps"],
                 prefill_calls=engine.stats["prefill_calls"],
                 interruptions=engine.stats["interruptions"], **timers,
                 wall_s=elapsed + time.perf_counter() - t0)
        with metrics_path.open("a") as f:
          f.write(json.dumps(m) + "\n")
        last = m
        if version % r.log_every == 0 or version == r.versions:
          say(format_line(m, int(r.versions)))
        checkpoint_due = version % r.checkpoint_every == 0 or version == r.versions
    if pending is not None and not engine.in_flight():  # the non-interruptible engine's turn
      t = time.perf_counter()
      engine.update_weights(learner.params, pending)
      timers["prefill_s"] += time.perf_counter() - t
      pending = None
    if checkpoint_due and pending is None:
      save()
      checkpoint_due = False
  ckpt.close()
  ctl.close()
  if r.export:
    checkpoint.save_export(workdir / "export", jax.device_get(learner.params),
                           model=registry.to_dict(transformer, run_.model_cfg), dtype="float32",
                           extra={"tokenizer": run_.tokenizer_spec, "trained_versions": version},
                           overwrite=True)
  return last
