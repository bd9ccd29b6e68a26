"""Model fragments (``models/*.yaml``) that recipes ``!include:``.

This folder is also the package ``sb_mamba.hparams`` of an installed
sb_mamba (``setup.py`` maps it), read through
:func:`sb_mamba.resources.hparams_path`.
"""
