"""The YAML presets (``<kind>/<name>.yaml``), installed as the package ``tav_configs``; read them through
``tav.config.preset_path`` / ``list_presets``."""
