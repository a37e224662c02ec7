"""Data: video/audio I/O on PyAV, tokenizers, the VAT dataset, and the dataset builder."""
