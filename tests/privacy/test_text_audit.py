"""privacy.main's text modality: the ReCIT audit runs from its config and scores each attack."""
import pytest

from configs.privacy import recit_notes
from privacy import runner


def test_text_config_validates_and_rejects_unknown_attacks():
  runner.validate(recit_notes.get_config())
  config = recit_notes.get_config()
  config.attacks = ("recit", "recitt")
  with pytest.raises(ValueError, match="unknown attack 'recitt'"):
    runner.validate(config)


def test_text_audit_runs_and_the_token_set_is_exact(tmp_path):
  config = recit_notes.get_config()
  config.attacks = ("token_set", "recit")
  config.batch_size = 1
  config.text.pretrain_steps = 2
  config.text.top_k = 2
  config.text.sweeps = 0
  results = runner.run(config, tmp_path)
  assert results["token_set"]["token_precision"] == 1.0
  assert results["token_set"]["token_recall"] == 1.0
  assert 0.0 <= results["recit"]["rouge_l"] <= 1.0
  lines = (tmp_path / "reconstructions.txt").read_text().splitlines()
  assert lines[0].startswith("[token_set] ") and lines[-1].startswith("[recit] ")
