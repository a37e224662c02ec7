"""The command-line scripts, one per stage, named as in the papers' READMEs. Installed as the package
``tav_scripts``: run them as files (``python scripts/sample_tav.py ...``), through the console commands
(``tav-sample ...``), or import them (``from tav_scripts import sample_tav``)."""
