"""What ``privacy.main`` runs for a config: checks first, then the modality's audit.

``RUNNERS`` maps ``config.modality`` to ``run(config, workdir, overwrite=...) -> results``.
"""
from __future__ import annotations

from privacy import attacks, defenses, image_audit, text_audit
from privacy.attacks import image as _image_attacks  # noqa: F401  (registers the attacks)

RUNNERS = {"images": image_audit.run, "text": text_audit.run}


def validate(config):
  """ValueError naming the first bad value of ``config`` (before any training)."""
  if config.modality not in RUNNERS:
    raise ValueError(f"config.modality={config.modality!r} is unknown; available: "
                     f"{', '.join(RUNNERS)}.")
  for name in config.attacks:
    attacks.get(name)
  defenses.settings_for(config.defense, **(dict(config.defenses[config.defense])
                                           if config.defense in config.defenses else {}))
  if int(config.batch_size) < 1 or int(config.trials) < 1:
    raise ValueError(f"batch_size and trials must be >= 1, got {config.batch_size}, "
                     f"{config.trials}.")


def run(config, workdir, *, overwrite: bool = False) -> dict:
  validate(config)
  return RUNNERS[config.modality](config, workdir, overwrite=overwrite)
