"""VL-RewardBench, as its authors release it, and the r1_reward copy.

Accepted row forms (one file holds one form):

* the dataset card's parquet (``MMInstruction/VL-RewardBench``, ``data/test-00000-of-00001.parquet``,
  read by the official ``inference_hf.py`` with pandas): ``id, query, response`` (two),
  ``image`` (``{"bytes", "path"}``), ``human_ranking`` (``[0, 1]``: the first is preferred),
  ``models, judge, rationale, query_source, ground_truth``. Checked against the card's revision
  ``cdb956c`` (1,250 test rows) and its later ``main`` (1,247 test rows, the same features);
* the repository's ``data/data.jsonl`` (vl-rewardbench/VL_RewardBench, commit ``e492d65``): the same
  fields with ``image_path`` relative to the release's ``data/`` folder (``images/<source>/<file>``)
  instead of image bytes;
* ``inference_hf.py``'s output JSONL (commit ``eb00f28``): ``id, query, response, ranking`` (the
  card's ``human_ranking`` renamed), ``models, judge, rationale, meta, query_source`` and no image at
  all (the image stays in the parquet): its rows are missing media unless ``image``/``image_path``
  is added;
* the r1_reward copy vendored in ``data/benchmarks`` (yfzhang114/r1_reward ``inference/``):
  ``id, prompt, chosen, rejected, image`` (a path).

Categories are the official ``cal.py`` ``group_mapping`` of the source dataset: from the second
component of ``image_path`` where there is one (what ``cal.py`` reads), else from the id prefix.
"""

from __future__ import annotations

from typing import Any

from mmrm.eval.items import EvalItem, Order, content_hash
from mmrm.eval.loaders.assemble import RowPair, assemble
from mmrm.eval.loaders.media import MediaOptions, media_key
from mmrm.eval.loaders.rows import Source, need
from mmrm.rm.errors import InvalidInput

__all__ = ["VLRB_CARD_REVISIONS", "VLRB_SOURCES", "load_vl_rewardbench", "vlrb_source"]

#: The dataset-card revisions (MMInstruction/VL-RewardBench) the parquet reader was checked against.
VLRB_CARD_REVISIONS: dict[str, int] = {"cdb956c": 1250, "main (after 4c922f9)": 1247}

#: Source dataset of a VL-RewardBench row from its id prefix (case-insensitive), in match order, and
#: the category the official script (``cal.py``: ``group_mapping``) reports it under. Any other id is
#: VLFeedback (its rows carry their own sub-source: LRVInstruction, jailbreak-*, svit-*, ...), which
#: is what the official mapping and the r1_reward scorer's fallback do too.
#: Case matters for a naive match: "RLAIF-V-..." and "RLHF-V-..." do not contain the lower-case
#: strings "rlaif"/"rlhf", and a scorer that tests that way files 301 hallucination rows as general.
VLRB_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("hallucination_pair", "povid", "hallucination"),
    ("rlaif-v", "rlaif-v", "hallucination"),
    ("rlhf-v", "rlhf-v", "hallucination"),
    ("mathverse", "reasoning_tasks", "reasoning"),
    ("mmmu_pro", "reasoning_tasks", "reasoning"),
    ("wildvision-battle", "wildvision-battle", "general"),
)
_VLRB_DATASET_CATEGORY = {
    "vlfeedback": "general",
    "povid": "hallucination",
    "reasoning_tasks": "reasoning",
    "rlhf-v": "hallucination",
    "rlaif-v": "hallucination",
    "wildvision-battle": "general",
}

_RELEASES = ("the dataset card's parquet (id, query, response, image, human_ranking, models, judge, rationale, "
             "query_source, ground_truth), the repository's data.jsonl (id, image_path, query, response, "
             "human_ranking, ...), inference_hf.py's output (id, query, response, ranking, ...) or the r1_reward "
             "copy (id, prompt, chosen, rejected, image)")


def vlrb_source(row_id: str, image_path: str | None = None) -> tuple[str, str]:
    """(source dataset, category) of a VL-RewardBench row."""
    if image_path:  # the release's image_path is "<root>/<dataset>/<file>", which cal.py reads
        parts = image_path.split("/")
        if len(parts) > 2 and parts[1] in _VLRB_DATASET_CATEGORY:
            return parts[1], _VLRB_DATASET_CATEGORY[parts[1]]
    low = row_id.lower()
    for prefix, source, category in VLRB_SOURCES:
        if low.startswith(prefix):
            return source, category
    return "vlfeedback", "general"


def _release_pair(row: dict[str, Any], where: str) -> tuple[str, str, str]:
    """(query, chosen, rejected) of a release row: the lower rank is the preferred response."""
    field = "ranking" if "ranking" in row and "human_ranking" not in row else "human_ranking"
    need(row, ("id", "query", "response", field), where,
         "the VL-RewardBench release (id, query, response, human_ranking; or inference_hf.py output's ranking)")
    responses, ranking = list(row["response"]), [int(r) for r in row[field]]
    if len(responses) != 2 or len(ranking) != 2 or sorted(ranking) != [0, 1]:
        raise InvalidInput(f"{where}: {field} {ranking} does not order the two responses ({len(responses)} given; "
                           "expected [0, 1] or [1, 0]: 0 is the preferred one)", field=f"{where}.{field}")
    best, worst = ranking.index(0), ranking.index(1)
    return row["query"], responses[best], responses[worst]


def _row(row: dict[str, Any], where: str) -> RowPair:
    if "query" in row or "response" in row:
        text, chosen, rejected = _release_pair(row, where)
    elif "prompt" in row:
        need(row, ("id", "prompt", "chosen", "rejected"), where, "the r1_reward copy (id, prompt, chosen, rejected, image)")
        text, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        need(row, ("id", "query", "response", "human_ranking"), where, _RELEASES)
        raise AssertionError("unreachable")
    image = row.get("image")
    if image is None:
        image = row.get("image_path")
    src, category = vlrb_source(str(row["id"]), row.get("image_path"))
    # inference_hf.py's output carries no image: a missing reference (refused, or a marked placeholder)
    ref = image if image is not None else f"(no image in the row; id {row['id']})"
    # cal.py counts one answer per id + query + responses (distribution(), its `id`), image aside
    cal_key = content_hash(str(row["id"]), text, sorted([chosen, rejected]))
    return RowPair(source_id=str(row["id"]), prompt=text, chosen=chosen, rejected=rejected, category=category,
                   subset=src, key_parts=(text, chosen, rejected, media_key(image)), prompt_media=(("image", ref),),
                   meta={"cal_key": cal_key})


def load_vl_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """VL-RewardBench (its parquet, data.jsonl, inference_hf.py output, or the r1_reward copy) -> items.

    Its pairs are stored chosen-first, so the default ``order`` is ``random`` (a judge must not learn
    that A is always right); reward models are order-blind."""
    return assemble("vl-rewardbench", source, _row, media=media, order=order, seed=seed, limit=limit)
