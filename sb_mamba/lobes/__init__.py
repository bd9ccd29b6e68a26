"""Separator architectures (SepMamba, ...) built from :mod:`sb_mamba.nnet`."""
