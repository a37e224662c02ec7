"""Static HTML reports of results folders: videos with sound side by side, scores, metrics and plots
(``tools/report.py``; the pieces: ``sources`` reads, ``media`` checks and places videos, ``plots`` draws,
``page`` writes HTML, ``build`` puts them together)."""

from tav.report.build import Report, build_report

__all__ = ["Report", "build_report"]
