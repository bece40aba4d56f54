"""Targets we compile for without having them: plain data (no jax), resolved by core/targets.py.

A target is a named set of accelerators: the compiler to run (``platform``), how to describe
its devices to ``jax.experimental.topologies.get_topology_desc`` (a TPU topology name such as
``"v5e:2x4"``, or a GPU ``target_config`` text proto + ``"1x1x<n>"``), and the per-chip facts
the memory plans and roofline estimates need. Chip facts are the vendors' published numbers:

* H200 SXM (NVIDIA H200 datasheet): 141 GB HBM3e at 4.8 TB/s, 989 TFLOP/s dense BF16 (the
  datasheet's 1,979 is with 2:4 sparsity), 132 SMs, 227 KiB shared memory per block
  (``h200.txtpb``, the XLA ``GpuTargetConfig`` of the chip).
* TPU v5e (cloud.google.com/tpu/docs/v5e): 16 GB HBM2 at 819 GB/s, 197 TFLOP/s BF16.
* TPU v5p (cloud.google.com/tpu/docs/v5p): 95 GB HBM2e at 2,765 GB/s, 459 TFLOP/s BF16.
  Cloud names count TensorCores, two per v5p chip: ``v5p-128`` is 64 chips (4x4x4) and JAX
  sees one device per chip (megacore).
* TPU v6e / Trillium (cloud.google.com/tpu/docs/v6e): 32 GB HBM at 1,638 GB/s, 918 TFLOP/s.

HBM is counted in GiB for the TPUs (the chips hold 16/95/32 GiB) and as the datasheet's
decimal 141 GB for the H200 (it reports ~150 GB; 141 keeps the plan conservative).
"""
from __future__ import annotations

import dataclasses
import pathlib

_HERE = pathlib.Path(__file__).resolve().parent
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip: memory, peak dense BF16 FLOP/s, HBM bandwidth."""
  kind: str
  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_s: float


@dataclasses.dataclass(frozen=True)
class Target:
  """A named set of ``num_devices`` chips on one ``platform`` ("cuda" or "tpu").

  ``topology``: TPU topology name for ``get_topology_desc`` ("v5e:2x4"), or the GPU layout
  "1x1x<n>" (hosts x ... x devices); ``target_config``: file (in this directory) with the
  GPU's XLA ``GpuTargetConfig`` text proto, None for TPUs.
  """
  name: str
  platform: str
  topology: str
  num_devices: int
  chip: Chip
  target_config: str | None = None
  extra: str = ""  # the pip extra that installs the compiler

  def target_config_text(self) -> str | None:
    return None if self.target_config is None else (_HERE / self.target_config).read_text()


H200 = Chip("NVIDIA H200", hbm_bytes=141 * 10**9, peak_bf16_flops=989e12,
            hbm_bytes_per_s=4.8e12)
V5E = Chip("TPU v5 lite", hbm_bytes=16 * GiB, peak_bf16_flops=197e12, hbm_bytes_per_s=819e9)
V5P = Chip("TPU v5", hbm_bytes=95 * GiB, peak_bf16_flops=459e12, hbm_bytes_per_s=2765e9)
V6E = Chip("TPU v6 lite", hbm_bytes=32 * GiB, peak_bf16_flops=918e12, hbm_bytes_per_s=1638e9)


def _gpu(name, n, chip, config):
  return Target(name, "cuda", f"1x1x{n}", n, chip, target_config=config, extra="aot-gpu")


def _tpu(name, topology, chip):
  dims = [int(d) for d in topology.split(":")[1].split("x")]
  n = 1
  for d in dims:
    n *= d
  return Target(name, "tpu", topology, n, chip, extra="aot-tpu")


TARGETS: dict[str, Target] = {t.name: t for t in (
    _gpu("h200", 1, H200, "h200.txtpb"),
    _gpu("8xh200", 8, H200, "h200.txtpb"),
    _tpu("v5e-4", "v5e:2x2", V5E),
    _tpu("v5e-8", "v5e:2x4", V5E),
    _tpu("v5e-256", "v5e:16x16", V5E),
    _tpu("v5p-8", "v5p:2x2x1", V5P),
    _tpu("v5p-128", "v5p:4x4x4", V5P),
    _tpu("v5p-256", "v5p:4x4x8", V5P),
    _tpu("v6e-4", "v6e:2x2", V6E),
    _tpu("v6e-8", "v6e:2x4", V6E),
    _tpu("v6e-256", "v6e:16x16", V6E),
)}


def get(name: str) -> Target:
  """The target called ``name``; a ValueError listing the valid names otherwise."""
  if name not in TARGETS:
    raise ValueError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}.")
  return TARGETS[name]
