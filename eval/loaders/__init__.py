"""Benchmark loaders: each reads its benchmark's own release files into :class:`EvalItem` records.

| name | format | categories |
|---|---|---|
| ``vl-rewardbench`` | the dataset card's parquet (``id, query, response, image, human_ranking, ...``), the repository's ``data.jsonl`` (``image_path``), ``inference_hf.py``'s output (``ranking``), or the r1_reward copy (``id, prompt, chosen, rejected, image``) | general / hallucination / reasoning (``cal.py``'s ``group_mapping``) |
| ``mm-rlhf-rewardbench`` | JSONL ``id, image`` or ``video, prompt, chosen, rejected``; rows sharing an ``id`` are one prompt group | mcq / long / short / safety / video (keyword in the media path) |
| ``multimodal-rewardbench`` | one JSON array of ``ID, Text, Image, Output1, Output2, Better, Category`` | the official script's: ``Category``, with ``safety`` split into bias / toxicity and ``reasoning`` into math / coding by ``ID`` |
| ``rewardbench`` | text-only ``prompt, chosen, rejected, subset, id`` (JSONL, Parquet, or a ``datasets`` dataset) | its four sections (Chat, Chat Hard, Safety, Reasoning) over 23 subsets |
| ``mmrb2`` | MMRB2's parquet per task (``pair_id, prompt_text, prompt_images, response_a_text, response_a_images, ...``) or its ``benchmark/<task>.json`` | the task: t2i / edit / interleaved / reasoning |
| ``mj-bench`` | MJ-Bench's split rows ``caption, image0, image1, label`` | the perspective: alignment / safety / quality / bias |
| ``preference`` | generic ``prompt, chosen, rejected`` + optional ``images``/``image``, ``id``, ``category``, ``group`` (JSONL, JSON, Parquet, ``datasets``) | the ``category`` column, else ``all`` |

Every loader declares how one row maps to a pair (:class:`~mmrm.eval.loaders.assemble.RowPair`);
:func:`~mmrm.eval.loaders.assemble.assemble` does keys, order, ``limit`` (before any media is read),
media resolution, placeholders and the missing-media refusal (:mod:`mmrm.eval.loaders.media`). A
row of the wrong shape is refused with the missing field(s) and the release format expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmrm.eval.items import EvalItem
from mmrm.eval.loaders.media import MediaOptions, MissingMedia, media_key, placeholder_image
from mmrm.eval.loaders.mj_bench import MJ_BENCH_PERSPECTIVES, load_mj_bench
from mmrm.eval.loaders.mm_rlhf_rewardbench import MMRLHF_CATEGORIES, load_mm_rlhf_rewardbench
from mmrm.eval.loaders.mmrb2 import MMRB2_TASKS, load_mmrb2
from mmrm.eval.loaders.multimodal_rewardbench import MMRB_CATEGORIES, load_multimodal_rewardbench, mmrb_category
from mmrm.eval.loaders.preference import load_preference
from mmrm.eval.loaders.rewardbench import REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS, load_rewardbench
from mmrm.eval.loaders.rows import Source, read_rows
from mmrm.eval.loaders.vl_rewardbench import VLRB_CARD_REVISIONS, VLRB_SOURCES, load_vl_rewardbench, vlrb_source
from mmrm.rm.errors import InvalidInput

__all__ = [
    "LOADERS",
    "MJ_BENCH_PERSPECTIVES",
    "MMRB2_TASKS",
    "MMRB_CATEGORIES",
    "MMRLHF_CATEGORIES",
    "REWARDBENCH_EXAMPLE_COUNTS",
    "REWARDBENCH_SECTIONS",
    "VLRB_CARD_REVISIONS",
    "VLRB_SOURCES",
    "MediaOptions",
    "MissingMedia",
    "Source",
    "load_benchmark",
    "load_mj_bench",
    "load_mm_rlhf_rewardbench",
    "load_mmrb2",
    "load_multimodal_rewardbench",
    "load_preference",
    "load_rewardbench",
    "load_vl_rewardbench",
    "media_key",
    "mmrb_category",
    "placeholder_image",
    "read_rows",
    "vlrb_source",
]

LOADERS: dict[str, Callable[..., list[EvalItem]]] = {
    "vl-rewardbench": load_vl_rewardbench,
    "mm-rlhf-rewardbench": load_mm_rlhf_rewardbench,
    "multimodal-rewardbench": load_multimodal_rewardbench,
    "rewardbench": load_rewardbench,
    "mmrb2": load_mmrb2,
    "mj-bench": load_mj_bench,
    "preference": load_preference,
}


def load_benchmark(name: str, source: Source, **kwargs: Any) -> list[EvalItem]:
    """Load ``source`` with the loader called ``name`` (see :data:`LOADERS`)."""
    if name not in LOADERS:
        raise InvalidInput(f"unknown benchmark {name!r}", field="benchmark", limit=sorted(LOADERS))
    items = LOADERS[name](source, **kwargs)
    dup = len(items) - len({it.key for it in items})
    if dup:  # a loader bug, never the data's fault: keys are made unique on purpose
        raise AssertionError(f"{dup} duplicate pair keys from loader {name!r}")
    return items
