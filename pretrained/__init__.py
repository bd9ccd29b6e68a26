"""Shipped models in the hub layout (``sepmamba-librimini-8k/``).

This folder is also the package ``sb_mamba.pretrained`` of an installed
sb_mamba (``setup.py`` maps it), read through
:func:`sb_mamba.resources.pretrained_path`.
"""
