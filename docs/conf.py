"""Sphinx configuration for the PigeonPush documentation."""

project = "PigeonPush"
author = "The PigeonPush developers"
extensions: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
