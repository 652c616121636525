"""Sphinx configuration of the ska-oso-oet documentation (Markdown pages through MyST).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are errors).
The reference pages under ``reference/`` are filled in from the code while they are read
(``_ext/oet_reference.py``), so they always describe the code they were built from.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "ska-oso-oet"
author = "SKA Observatory"
copyright = "SKA Observatory"
try:
    release = _package_version("ska-oso-oet")
except PackageNotFoundError:
    release = "0.0.0+unknown"

extensions = ["myst_parser", "oet_reference"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
html_theme = "alabaster"
version = release
html_title = f"ska-oso-oet {release}"
