"""Sphinx configuration: the Markdown pages (MyST) plus API reference pages
generated from the code's docstrings (autodoc)."""

project = "mmugather"
author = "the mmugather developers"
extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "examples/*/build", "examples/**/README.md"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
