"""sb_mamba: state-space (Mamba / S4) speech separators for SpeechBrain.

The package holds the building blocks (:mod:`sb_mamba.nnet`), the separator
architectures (:mod:`sb_mamba.lobes`) and the shared recipe code.

Authors
-------
 * sb_mamba developers
"""

__version__ = "0.1.0"
