"""Where local weight files live: ``$TAV_CKPT_DIR`` or ``saved_ckpts/`` under the working directory."""

from __future__ import annotations

import os
from pathlib import Path


def ckpt_dir() -> Path:
    """The folder searched for local weight files (see ``saved_ckpts/README.md``)."""
    return Path(os.environ.get("TAV_CKPT_DIR", "saved_ckpts"))
