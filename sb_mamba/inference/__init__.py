"""Inference: :class:`MambaSeparator` (files, tensors, long recordings),
chunked overlap-add (:mod:`~sb_mamba.inference.chunking`) and export of a
trained recipe to the hub layout (:mod:`~sb_mamba.inference.export`).

This package reads and writes audio through :mod:`sb_mamba.audio` and never
imports :mod:`sb_mamba.dataio` (datasets) or :mod:`sb_mamba.training`.
"""

from sb_mamba.inference.separator import MambaSeparator

__all__ = ["MambaSeparator"]
