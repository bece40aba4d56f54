"""reports/adadim --resume: runs already in the report's JSON are kept, not redone, and a
JSON made with other settings is refused."""
import json

import pytest

from reports import adadim


def test_resume_keeps_finished_runs_and_refuses_other_settings(tmp_path, capsys):
  args = ["--quick", "--out-dir", str(tmp_path)]
  adadim.run(adadim.parse_args(args))
  first = json.loads((tmp_path / "adadim.json").read_text())["results"]["results"]
  capsys.readouterr()
  adadim.run(adadim.parse_args(args + ["--resume"]))
  printed = capsys.readouterr().out
  again = json.loads((tmp_path / "adadim.json").read_text())["results"]["results"]
  key = lambda r: (r["seed"], r["bits"], r["method"])
  assert sorted(map(key, again)) == sorted(map(key, first))
  # Every run is kept but the first RTN one, redone for the activation statistics.
  assert printed.count("kept from the earlier run") == len(first) - 1
  kept = {key(r): r["perplexity"] for r in first}
  assert all(kept[key(r)] == pytest.approx(r["perplexity"], rel=1e-6) for r in again)
  saved = json.loads((tmp_path / "adadim.json").read_text())
  saved["config"]["group"] = 64  # as if made with --group 64 (--quick forces 32)
  (tmp_path / "adadim.json").write_text(json.dumps(saved))
  with pytest.raises(SystemExit, match="other settings"):
    adadim.run(adadim.parse_args(args + ["--resume"]))
