"""Command-line tools of ``tools/clip_score/``."""
