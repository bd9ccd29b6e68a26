"""Training: the one :class:`~sb_mamba.training.brain.Separation` Brain, the
recipe entry point (:func:`~sb_mamba.training.recipe.main`) every
``recipes/*/train.py`` calls, and learning-rate schedules.
"""
