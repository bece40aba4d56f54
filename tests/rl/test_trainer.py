"""rl.trainer: eta=0 asynchronous == the synchronous loop (same samples, same losses),
bounded staleness and interruptions at eta > 0, and bad input."""
import json

import numpy as np
import pytest

from rl import trainer
from tests.rl.small_rl import odd_length_reward, small_config

COMPARED = ("reward", "loss", "grad_norm", "kl_behav_prox", "staleness", "completion_tokens",
            "clip_frac")


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_eta0_async_equals_the_synchronous_loop(tmp_path):
  config = small_config(eta=0, train_delay_steps=2)
  trainer.run(config, tmp_path, reward_fn=odd_length_reward, say=lambda m: None)
  metrics = _metrics(tmp_path)
  assert metrics[0]["version"] == 0 and "eval_accuracy" in metrics[0]
  sync = trainer.run_synchronous(config, reward_fn=odd_length_reward, say=lambda m: None)
  assert [m["version"] for m in metrics[1:]] == [1, 2, 3]
  for a, s in zip(metrics[1:], sync):
    assert {k: a[k] for k in COMPARED} == {k: s[k] for k in COMPARED}
    assert a["staleness"] == {"0": 4} and a["interrupted_samples"] == 0
  assert any(m["loss"] != 0 for m in sync)  # the dense reward makes real updates
  for m in sync:  # on-policy: the sampler's log-probs are the trainer's
    assert m["kl_behav_prox"] < 1e-6
  assert (tmp_path / "export" / "export.json").is_file()


def test_the_clock_charges_prefill_calls(tmp_path):
  """At eta=0 nothing is in flight at an update, so every prefill call is a prompt admitted
  (its samples share it) and is charged in its tick: clock = ticks + cost * calls. Without a
  training delay the schedule itself does not depend on the cost."""
  free = small_config(eta=0, versions=2)
  trainer.run(free, tmp_path / "free", reward_fn=odd_length_reward, say=lambda m: None)
  charged = small_config(eta=0, versions=2, prefill_cost=0.75)
  trainer.run(charged, tmp_path / "charged", reward_fn=odd_length_reward, say=lambda m: None)
  for a, b in zip(_metrics(tmp_path / "free")[1:], _metrics(tmp_path / "charged")[1:]):
    assert {k: a[k] for k in COMPARED + ("ticks",)} == {k: b[k] for k in COMPARED + ("ticks",)}
    assert a["clock"] == a["ticks"]
    assert b["prefill_calls"] == 2 * b["version"]  # 2 prompts per batch, 2 samples each
    assert b["clock"] == b["ticks"] + 0.75 * b["prefill_calls"]
    assert b["decode_s"] > 0 and b["prefill_s"] > 0 and b["train_s"] > 0


def test_stale_run_is_bounded_by_eta_and_interrupts(tmp_path):
  config = small_config(eta=2, versions=4, num_slots=8, train_delay_steps=1, loss="naive")
  last = trainer.run(config, tmp_path, reward_fn=odd_length_reward, say=lambda m: None)
  metrics = _metrics(tmp_path)[1:]
  lags = {int(k) for m in metrics for k in m["staleness"]}
  assert max(lags) <= 2 and max(lags) >= 1
  assert last["interruptions"] > 0 and last["version"] == 4
  assert sum(m["interrupted_samples"] for m in metrics) > 0
  assert np.isfinite([m["loss"] for m in metrics]).all()


def test_bad_input(tmp_path):
  with pytest.raises(ValueError, match="must be an integer >= 0"):
    trainer.Run(small_config(eta=-1))
  with pytest.raises(ValueError, match="prefill_cost=-1"):
    trainer.Run(small_config(prefill_cost=-1.0))
  with pytest.raises(ValueError, match="larger than the 16 training problems"):
    trainer.Run(small_config(prompts_per_batch=17))
  bad = tmp_path / "tasks.txt"
  bad.write_text("1 + 2 = 3\n4 + x = 9\n")
  with pytest.raises(ValueError, match=r"tasks.txt:2: cannot parse"):
    trainer.Run(small_config(task_file=str(bad)))
  with pytest.raises(ValueError, match="loss='ppo'"):
    trainer.Run(small_config(loss="ppo"))
  with pytest.raises(ValueError, match="without overlap"):
    trainer.split_devices(4, 5, devices=list(range(8)))


def test_a_raising_reward_drops_the_sample_and_the_run_goes_on(tmp_path, caplog):
  calls = []

  def flaky(problem, text):
    calls.append(text)
    if len(calls) % 3 == 0:
      raise ZeroDivisionError("verifier bug")
    return odd_length_reward(problem, text)

  last = trainer.run(small_config(versions=2, eta=1), tmp_path, reward_fn=flaky,
                     say=lambda m: None)
  assert last["version"] == 2
  assert "sample dropped" in caplog.text
  with pytest.raises(ValueError, match="different config"):  # a workdir is never mixed up
    trainer.run(small_config(versions=2, eta=0), tmp_path, say=lambda m: None)


def test_waiting_rollouts_never_mix_versions(tmp_path):
  config = small_config(eta=2, versions=3, num_slots=8, interruptible=False)
  last = trainer.run(config, tmp_path, reward_fn=odd_length_reward, say=lambda m: None)
  assert last["interruptions"] == 0 and last["version"] == 3
  assert all(m["interrupted_samples"] == 0 for m in _metrics(tmp_path)[1:])
