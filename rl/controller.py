r"""The rollout controller of asynchronous RL: AReaL's staleness gate, oldest-first batches, and a
reward service off the critical path (Fu et al., arXiv:2505.24298 §3.1 and §4.1 Eq. 3).

Rollout workers ask the controller before starting each generation. With ``i`` the current
policy version (the number of batches trained so far), ``B`` the batch size and ``N_r`` the number
of trajectories generated so far *including the one being submitted*, a submission is admitted
only if

    floor((N_r - 1) / B) <= i + eta                                   (Eq. 3)

i.e. at most ``(i + eta + 1) B`` trajectories may exist while the trainer is at version ``i``.
``eta = 0`` is synchronous RL (the next batch is generated only after the trainer published the
new version); ``eta = 1`` overlaps one step; larger ``eta`` trades staleness for throughput.
Trajectories whose reward computation failed are not counted in ``N_r`` (their slot is freed, as
in AReaL's ``StalenessManager``, which counts accepted + running).

Finished trajectories go to a *reward service*: a thread pool running the verifier functions, so
slow verifiers never block generation or training. A verifier that raises drops that sample
(logged, counted in ``stats["dropped"]``) and the run goes on. Rewarded samples wait in a buffer;
the trainer takes batches of exactly ``B``, oldest first (smallest starting policy version, then
submission order), and every sample is handed out exactly once.

The controller is plain thread-safe Python (no JAX): the rollout engine, the trainer and the
reward threads all call into it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import heapq
import logging
import threading
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Ticket:
  """Permission to generate one trajectory.

  uid: submission order (0, 1, 2, ...), unique for the controller's lifetime.
  prompt_index: index into the prompt set; prompt: the prompt itself.
  version: the policy version when generation started (the trajectory's oldest tokens).
  """
  uid: int
  prompt_index: int
  prompt: Any
  version: int


@dataclasses.dataclass(frozen=True)
class Sample:
  """A finished, rewarded trajectory: the ticket, what the rollout produced, and its reward."""
  ticket: Ticket
  trajectory: Any
  reward: float


def staleness_gate(num_generated: int, batch_size: int, version: int, eta: int) -> bool:
  """AReaL Eq. 3: may the ``num_generated``-th trajectory (1-based) start at ``version``?"""
  return (num_generated - 1) // batch_size <= version + eta


class Controller:
  """Staleness-bounded rollout controller with a threaded reward service.

  Args:
    prompts: the prompt set, handed out in order, ``epochs`` times.
    batch_size: ``B``, trajectories per training batch (must not exceed the prompt set).
    eta: the maximum staleness (>= 0); 0 is synchronous RL.
    reward_fn: ``reward_fn(prompt, trajectory) -> float``, the verifier.
    reward_workers: threads of the reward service; 0 runs the verifier inline in
      :meth:`finish` (deterministic, for tests and debugging).
    epochs: passes over the prompt set.
  """

  def __init__(self, prompts: Sequence[Any], *, batch_size: int, eta: int,
               reward_fn: Callable[[Any, Any], float], reward_workers: int = 4, epochs: int = 1):
    if int(eta) != eta or eta < 0:
      raise ValueError(f"eta={eta} must be an integer >= 0: it bounds how many versions a "
                       "trajectory may lag the trainer (0 is synchronous RL).")
    if int(batch_size) != batch_size or batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be a positive integer.")
    if len(prompts) == 0:
      raise ValueError("the prompt set is empty: pass at least batch_size prompts.")
    if batch_size > len(prompts):
      raise ValueError(f"batch_size={batch_size} is larger than the prompt set "
                       f"({len(prompts)} prompts): a batch would repeat prompts; lower the batch "
                       "size or add prompts.")
    if epochs < 1:
      raise ValueError(f"epochs={epochs} must be >= 1.")
    if reward_workers < 0:
      raise ValueError(f"reward_workers={reward_workers} must be >= 0 (0: inline rewards).")
    self.prompts = prompts
    self.batch_size = int(batch_size)
    self.eta = int(eta)
    self.reward_fn = reward_fn
    self._total = len(prompts) * epochs
    self._lock = threading.Condition()
    self._version = 0
    self._next_uid = 0
    self._running: dict[int, Ticket] = {}       # submitted, not yet rewarded
    self._buffer: list[tuple[int, int, Sample]] = []  # heap of (version, uid, sample)
    self._batches_taken = 0
    self.stats = {"submitted": 0, "finished": 0, "rewarded": 0, "dropped": 0, "consumed": 0}
    self._pool = (concurrent.futures.ThreadPoolExecutor(reward_workers, "reward")
                  if reward_workers else None)

  # -- rollout side ------------------------------------------------------------------------------

  @property
  def version(self) -> int:
    return self._version

  def _num_generated(self) -> int:
    # Trajectories that exist: all submissions minus those dropped by the reward service.
    return self.stats["submitted"] - self.stats["dropped"]

  def exhausted(self) -> bool:
    """No prompts left to hand out."""
    return self._next_uid >= self._total

  def can_submit(self) -> bool:
    """Whether :meth:`submit` would admit a trajectory now."""
    with self._lock:
      return (not self.exhausted()
              and staleness_gate(self._num_generated() + 1, self.batch_size, self._version,
                                 self.eta))

  def submit(self) -> Ticket | None:
    """Admits one generation if the gate of Eq. 3 allows it; None if it does not (wait for the
    trainer to publish a new version) or the prompts are exhausted."""
    with self._lock:
      if not self.can_submit():
        return None
      uid = self._next_uid
      self._next_uid += 1
      index = uid % len(self.prompts)
      ticket = Ticket(uid, index, self.prompts[index], self._version)
      self._running[uid] = ticket
      self.stats["submitted"] += 1
      return ticket

  def finish(self, ticket: Ticket, trajectory: Any) -> None:
    """Hands a finished trajectory to the reward service (returns at once with a thread pool)."""
    with self._lock:
      if self._running.get(ticket.uid) is not ticket:
        raise ValueError(f"ticket {ticket.uid} is not running: finish each submitted ticket "
                         "exactly once.")
      self.stats["finished"] += 1
    if self._pool is None:
      self._reward(ticket, trajectory)
    else:
      self._pool.submit(self._reward, ticket, trajectory)

  def _reward(self, ticket: Ticket, trajectory: Any) -> None:
    try:
      reward = float(self.reward_fn(ticket.prompt, trajectory))
    except Exception as e:  # pylint: disable=broad-except  (any verifier bug drops one sample)
      log.warning("reward function failed on trajectory %d (prompt %d): %s: %s; sample dropped",
                  ticket.uid, ticket.prompt_index, type(e).__name__, e)
      with self._lock:
        del self._running[ticket.uid]
        self.stats["dropped"] += 1
        self._lock.notify_all()
      return
    with self._lock:
      del self._running[ticket.uid]
      heapq.heappush(self._buffer, (ticket.version, ticket.uid,
                                    Sample(ticket, trajectory, reward)))
      self.stats["rewarded"] += 1
      self._lock.notify_all()

  # -- trainer side ------------------------------------------------------------------------------

  def ready(self) -> int:
    """Rewarded samples waiting in the buffer."""
    with self._lock:
      return len(self._buffer)

  def _can_ever_fill(self) -> bool:
    pending = len(self._running) + (self._total - self._next_uid)
    return len(self._buffer) + pending >= self.batch_size

  def next_batch(self, timeout: float | None = 0.0) -> list[Sample] | None:
    """The ``B`` oldest rewarded samples, removed from the buffer; None if fewer are ready within
    ``timeout`` seconds (None: no limit), or at once when no batch can ever be completed from
    what is left. Waiting without a limit for a batch the gate cannot admit before the next
    :meth:`publish` raises RuntimeError instead of hanging."""
    with self._lock:
      if timeout is None and self._batches_taken > self._version + self.eta \
         and len(self._buffer) < self.batch_size:
        # The gate admits at most (version + eta + 1) B trajectories, all but the buffered ones
        # already consumed: waiting would never end.
        raise RuntimeError(f"next_batch() would wait forever: {self._batches_taken} batches "
                           f"taken at version {self._version} with eta={self.eta}; publish the "
                           "version trained on the last batch first.")
      if timeout is None or timeout > 0:
        self._lock.wait_for(lambda: len(self._buffer) >= self.batch_size
                            or not self._can_ever_fill(), timeout)
      if len(self._buffer) < self.batch_size:
        return None
      batch = [heapq.heappop(self._buffer)[2] for _ in range(self.batch_size)]
      self._batches_taken += 1
      self.stats["consumed"] += len(batch)
      return batch

  def publish(self, version: int) -> None:
    """The trainer finished training on a batch and published ``version`` (= current + 1).

    A version can only follow a batch it was trained on, so ``version <= batches taken``.
    """
    with self._lock:
      if version != self._version + 1:
        raise ValueError(f"publish({version}) but the controller is at version {self._version}: "
                         "versions go up by one per trained batch.")
      if version > self._batches_taken:
        raise ValueError(f"publish({version}) after only {self._batches_taken} batches were "
                         "taken: take a batch with next_batch() and train on it first.")
      self._version = version
      self._lock.notify_all()

  def wait_rewards(self, timeout: float | None = None) -> bool:
    """Blocks until every finished trajectory has been rewarded (or dropped)."""
    with self._lock:
      return self._lock.wait_for(
          lambda: self.stats["rewarded"] + self.stats["dropped"] == self.stats["finished"],
          timeout)

  # -- checkpointing -----------------------------------------------------------------------------

  def state_dict(self, encode: Callable[[Any], Any] = lambda t: t) -> dict:
    """JSON-able state (``encode`` turns a trajectory into JSON). Call it with no reward in
    progress (:meth:`wait_rewards` first): a reward being computed cannot be saved."""
    with self._lock:
      if self.stats["rewarded"] + self.stats["dropped"] != self.stats["finished"]:
        raise RuntimeError("state_dict() while rewards are in progress: wait_rewards() first.")
      ticket = lambda t: [t.uid, t.prompt_index, t.version]
      return {"version": self._version, "next_uid": self._next_uid,
              "batches_taken": self._batches_taken, "stats": dict(self.stats),
              "running": [ticket(t) for t in self._running.values()],
              "buffer": [[*ticket(s.ticket), encode(s.trajectory), s.reward]
                         for _, _, s in sorted(self._buffer)]}

  def load_state_dict(self, state: dict, decode: Callable[[Any], Any] = lambda t: t
                      ) -> dict[int, Ticket]:
    """Restores :meth:`state_dict`'s output; returns the running tickets by uid (the rollout
    side resumes them)."""
    with self._lock:
      make = lambda uid, index, version: Ticket(uid, index, self.prompts[index], version)
      self._version, self._next_uid = int(state["version"]), int(state["next_uid"])
      self._batches_taken = int(state["batches_taken"])
      self.stats = {k: int(v) for k, v in state["stats"].items()}
      self._running = {t[0]: make(*t) for t in state["running"]}
      self._buffer = []
      for uid, index, version, trajectory, reward in state["buffer"]:
        heapq.heappush(self._buffer, (version, uid, Sample(make(uid, index, version),
                                                           decode(trajectory), reward)))
      return dict(self._running)

  def close(self) -> None:
    """Stops the reward threads after the work already queued."""
    if self._pool is not None:
      self._pool.shutdown(wait=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
