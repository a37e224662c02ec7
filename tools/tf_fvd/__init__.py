"""Command-line tools of ``tools/tf_fvd/``."""
