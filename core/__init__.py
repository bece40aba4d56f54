"""The bottom layer: formats every other package shares, importing nothing of ours.

``packing`` and ``qtensor`` (the quantized-weight pytree and its int32 packing), ``sharding``
(meshes, logical axis rules, shardings) and ``checkpoint`` (run checkpoints and exports: the
only Orbax user).
"""
