"""Metric and data tools at the papers' paths (``tools/clip_score/``, ``tools/tf_fvd/``, ``tools/tia2v/``,
``tools/prepare_dataset.py``). Installed as the package ``tav_tools``."""
