"""mmrm: multimodal reward models and LMM-as-judge scoring.

The public face of the package. Heavy parts (torch, transformers, Ray) are imported lazily, so
``import mmrm`` and ``mmrm.rm.client`` stay light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("mmrm")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

from mmrm.rm.errors import MmrmError  # noqa: E402
from mmrm.rm.types import Group, Message, Pair, Provenance, Sample, ScoreResult  # noqa: E402

__all__ = ["__version__", "MmrmError", "Group", "Message", "Pair", "Provenance", "Sample", "ScoreResult"]
