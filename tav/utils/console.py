"""What a command prints: our own lines, not other programs' tips, tables and known-harmless warnings.

Scripts call :func:`configure_output` once at start. The library itself never prints; it logs through
``logging`` and warns through ``warnings``, and this module decides what reaches the terminal:

- our loggers (``tav.*``, the scripts) at INFO (DEBUG with ``verbose``);
- Lightning's info lines ("GPU available", "TPU available", the LitLogger tip, "LOCAL_RANK ...") at WARNING
  unless ``verbose`` (its warnings still show);
- a short list of third-party warnings that are known to be harmless here, each matched by its message and
  the module that raises it, so an unknown warning, or a known one from elsewhere, still shows.

Nothing is redirected: stderr stays the terminal, so real errors and warnings are never lost.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Loggers of the libraries whose INFO lines are chatter for our users (Lightning 2 ships under both names).
THIRD_PARTY_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "lightning.pytorch",
                       "lightning.fabric")

# (message regex, module regex): third-party warnings that say nothing about the user's run.
KNOWN_HARMLESS_WARNINGS: tuple[tuple[str, str], ...] = (
    # Lightning's pytree helper calls an API that torch 2.14 deprecated; nothing the caller can change
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.utilities\._pytree"),
    (r".*LeafSpec.*is deprecated", r"(torch\.utils\._pytree|pytorch_lightning\.utilities\._pytree)"),
    # small demo/test datasets have fewer batches per epoch than the logging interval; we log per step
    (r"The number of training batches \(\d+\) is smaller than the logging interval",
     r"pytorch_lightning\.loops\.fit_loop"),
    # we choose num_workers on purpose (0 in the demo: the data is in memory); the tip is for slow loaders
    (r"The '\w+_dataloader' does not have many workers", r"pytorch_lightning\.trainer\.connectors\.data_connector"),
    # the diffusion trainings share the VAT DataModule (its test split validates the VQGAN and the GPT); the
    # diffusion modules have no validation step and run with limit_val_batches=0
    (r"You passed in a `val_dataloader` but have no `validation_step`", r"pytorch_lightning\.trainer\."),
    # our checkpoints go to <run>/checkpoints on purpose; reusing the folder on resume is what --resume means
    (r"Checkpoint directory .* exists and is not empty", r"pytorch_lightning\.callbacks\.model_checkpoint"),
)

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _BelowWarningFrom(logging.Filter):
    """Drops records under WARNING from the third-party loggers (a handler filter, so it holds whatever order
    the libraries are imported in: Lightning resets its own logger's level to INFO when it is imported)."""

    def filter(self, record: logging.LogRecord) -> bool:
        third_party = record.name.split(".", 1)[0] in {n.split(".", 1)[0] for n in THIRD_PARTY_LOGGERS}
        return record.levelno >= logging.WARNING or not third_party


def _hub_progress_bars(enabled: bool) -> None:
    """transformers' "Loading weights" / "Writing model shards" bars: a local file loads in milliseconds. The
    environment variable covers a later import (and child processes); the call an earlier one."""
    if not enabled:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


def wants_verbose(argv: list[str] | None) -> bool:
    """Whether a command line (``sys.argv[1:]`` when ``argv`` is None) asks for ``--verbose``; read before the
    full parse so that warnings raised while parsing and loading are already filtered."""
    return "--verbose" in (sys.argv[1:] if argv is None else argv)


def configure_output(verbose: bool = False) -> None:
    """Set up logging for a command: ours at INFO (DEBUG if ``verbose``), third-party chatter silenced.

    ``verbose`` brings Lightning's own info lines and the filtered warnings back.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger("tav").setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, _BelowWarningFrom)]:
            handler.removeFilter(f)
        if not verbose:
            handler.addFilter(_BelowWarningFrom())
    _hub_progress_bars(enabled=verbose)
    for name in THIRD_PARTY_LOGGERS:
        if name in sys.modules:  # already imported (its import set INFO and maybe a handler of its own)
            logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        for message, module in KNOWN_HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, module=module)
