"""The installed mmrm version, read once from the package metadata.

It lives in the core (not the top-level package) so that core modules never import ``mmrm`` itself:
``mmrm/__init__.py`` re-exports it, and provenance records take it as their default.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__: str = _version("mmrm")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
