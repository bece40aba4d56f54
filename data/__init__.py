"""Data: the bundled corpora, tokenizers and the packed, resumable input pipelines.

Import the submodules (``data.pipeline``, ``data.tokenizers``, ``data.digits``); this package
itself imports nothing, so ``data.defaults`` stays light for config files.
"""
