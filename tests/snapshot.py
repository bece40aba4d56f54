"""A directory's exact contents, to assert that a refused command changed nothing on disk."""
import hashlib
from pathlib import Path


def digest(path) -> dict[str, str]:
  """``{relative path: sha256 of the bytes}`` for every file (and ``dir/`` for directories)."""
  path = Path(path)
  out = {}
  for p in sorted(path.rglob("*")):
    rel = str(p.relative_to(path))
    out[rel + ("/" if p.is_dir() else "")] = "" if p.is_dir() else \
        hashlib.sha256(p.read_bytes()).hexdigest()
  return out
