"""Small shared utilities: atomic file writes, paths of local weight files."""
