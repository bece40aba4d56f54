"""A tiny RL config shared by the trainer and CLI tests (same shapes: compiled once)."""
from configs import rl_arith


def small_config(**rl):
  c = rl_arith.get_config()
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
  c.optim.lr = 3e-3
  c.rl.update(init_export=None, train_problems=16, eval_problems=8, versions=3, prompts_per_batch=2,
              samples_per_prompt=2, max_new_tokens=6, num_slots=4, token_budget=64,
              micro_batches=2, rollout_devices=1, train_devices=2, eta=0, eval_every=2,
              checkpoint_every=1)
  c.rl.update(rl)
  return c


def odd_length_reward(problem, text: str) -> float:
  """A dense stand-in verifier so a random policy gets non-zero advantages."""
  del problem
  return float(len(text) % 2)


FLAGS = ("--config.rl.init_export=", "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
         "--config.model.n_kv_heads=1", "--config.model.head_dim=16", "--config.model.mlp_dim=64",
         "--config.optim.lr=0.003", "--config.rl.train_problems=16",
         "--config.rl.eval_problems=8", "--config.rl.prompts_per_batch=2",
         "--config.rl.samples_per_prompt=2", "--config.rl.max_new_tokens=6",
         "--config.rl.num_slots=4", "--config.rl.token_budget=64", "--config.rl.micro_batches=2",
         "--config.rl.rollout_devices=1", "--config.rl.train_devices=2",
         "--config.rl.eval_every=2", "--config.rl.checkpoint_every=1")
