"""Frozen encoders: for guidance and metrics CLIP ViT-B/32, AudioCLIP, wav2clip; for TIA2V conditions BEATs
(audio tokens) and CLIP ViT-L/14. Built once per process from local weight files (``saved_ckpts/``), with
one-line errors naming a missing file."""
