"""Command-line tools of ``tools/tia2v/``."""
