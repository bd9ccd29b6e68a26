"""sb_mamba: state-space (Mamba / S4) speech separators for SpeechBrain.

Layers, from the ground up: :mod:`sb_mamba.audio` (files) and
:mod:`sb_mamba.metrics`; :mod:`sb_mamba.nnet` (scan ops and Mamba / S4
modules) and :mod:`sb_mamba.lobes` (the separators); :mod:`sb_mamba.dataio`
(datasets, mixing, rooms); :mod:`sb_mamba.training` (the Brain and the recipe
main); :mod:`sb_mamba.inference` (``MambaSeparator``, export) and
:mod:`sb_mamba.cli` (the ``sb-mamba`` command).

Authors
-------
 * sb_mamba developers
"""

from sb_mamba.resources import hparams_path, pretrained_path

__version__ = "0.1.0"
__all__ = ["hparams_path", "pretrained_path", "__version__"]
