"""Nucleus segmentation pipeline for the Kaggle 2018 Data Science Bowl.

One module per concern; each stage (``python -m pipeline STAGE``) is a thin ``main()`` over
functions that tests call directly. See ``pipeline.cli`` for the list of stages.
"""

__version__ = "0.1.0"
