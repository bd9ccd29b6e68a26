"""Data for separation training.

* :mod:`~sb_mamba.dataio.manifests`: CSV manifests of the real datasets
  (WSJ0-2mix, WHAM!, WHAMR!, LibriMix, Echo2Mix) and the dataset reading them;
* :mod:`~sb_mamba.dataio.mixing`: dynamic mixing, dry or reverberant;
* :mod:`~sb_mamba.dataio.speakers`: speaker trees (index, split, resample cache);
* :mod:`~sb_mamba.dataio.room`, :mod:`~sb_mamba.dataio.rir_bank`: room
  simulation and RIR banks;
* :mod:`~sb_mamba.dataio.mixture_files`, :mod:`~sb_mamba.dataio.generate`,
  :mod:`~sb_mamba.dataio.librimini`: mixtures written to disk (fixed sets,
  generated datasets, LibriMini's valid/test mixtures).
"""
