"""What ``train/main.py`` checks and prints about config files before absl parses its flags.

* ``--config PATH`` must exist (else the error lists the configs there are);
* every ``--config.a.b=V`` must name a key of that config (else the closest keys are
  suggested, for typos and for near-misses such as ``train.num_steps`` -> ``train.steps``);
* ``--list_configs``: every config file with its one-line description;
* ``--config_help``: every key of a config with its value and what it means.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path
from typing import Sequence

from configs import common
from core.cli import UsageError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def config_files() -> list[Path]:
  return sorted(p for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


def load_config(path: str | Path, arg: str | None = None):
  """Runs the config file's ``get_config(arg)`` (or ``get_config()``)."""
  path = Path(path)
  if not path.is_file():
    names = ", ".join(p.name for p in config_files())
    raise UsageError(f"--config {path} does not exist. Configs in {CONFIG_DIR}: {names} "
                     "(python train/main.py --list_configs describes them).")
  spec = importlib.util.spec_from_file_location(f"effijax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def flatten(config, prefix: str = "") -> dict[str, object]:
  """``{"train.steps": 300, ...}`` for every leaf of a ConfigDict."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _config_arg(argv: Sequence[str]) -> tuple[str, str | None] | None:
  """``(path, arg)`` of ``--config path[:arg]`` / ``--config=path[:arg]``, or None."""
  for i, a in enumerate(argv):
    value = None
    if a == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    elif a.startswith("--config="):
      value = a.split("=", 1)[1]
    if value is not None:
      path, _, arg = value.partition(":")
      return path, arg or None
  return None


def check_overrides(argv: Sequence[str], keys: Sequence[str]) -> None:
  """Every ``--config.KEY=...`` names an existing key; else the closest ones are suggested."""
  for a in argv:
    if not a.startswith("--config.") or a.startswith("--config.="):
      continue
    key = a[len("--config."):].split("=", 1)[0]
    if key in keys:
      continue
    section, _, leaf = key.rpartition(".")
    leaves = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
    near = [f"{section}.{m}" if section else m
            for m in difflib.get_close_matches(leaf, leaves, n=2, cutoff=0.5)]
    near = near or difflib.get_close_matches(key, keys, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join('--config.' + n for n in near)}? " if near else ""
    raise UsageError(f"--config.{key} is not a key of this config; {hint}"
                     "python train/main.py --config FILE --config_help lists every key.")


def precheck(argv: Sequence[str]) -> None:
  """Handles --list_configs / --config_help and checks --config before absl parses flags."""
  if "--list_configs" in argv:
    print(list_configs())
    raise SystemExit(0)
  found = _config_arg(argv)
  if found is None:
    if "--config_help" in argv:
      raise UsageError("--config_help needs --config FILE.")
    return
  config = load_config(*found)
  if "--config_help" in argv:
    print(config_help(found[0], config))
    raise SystemExit(0)
  check_overrides(argv, list(flatten(config)))


def list_configs() -> str:
  lines = ["Configs (python train/main.py --config configs/NAME.py --workdir DIR):"]
  for p in config_files():
    doc = (_docstring(p) or "").strip().splitlines()
    lines.append(f"  {p.name:<26} {doc[0] if doc else ''}")
  return "\n".join(lines)


def _docstring(path: Path) -> str | None:
  return ast.get_docstring(ast.parse(path.read_text()))


def config_help(path: str, config) -> str:
  """Every key with its value in this config and what it means (``configs.common.KEY_DOCS``)."""
  docs = common.KEY_DOCS
  doc = (_docstring(Path(path)) or "").strip().splitlines()
  lines = [f"{path}: {doc[0] if doc else ''}", "",
           "Every key, its value in this config, and what it is (override with "
           "--config.KEY=VALUE):"]
  for key, value in flatten(config).items():
    lines.append(f"  {key:<28} {value!r:<16} {docs.get(key, '')}")
  return "\n".join(lines)

