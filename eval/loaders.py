"""Benchmark loaders: each reads its benchmark's published format into :class:`EvalItem` records.

| name | format | categories |
|---|---|---|
| ``vl-rewardbench`` | JSONL ``id, prompt, chosen, rejected, image`` (the r1_reward copy) or the release's ``id, query, response, ranking, image`` | general / hallucination / reasoning from the source in the id |
| ``mm-rlhf-rewardbench`` | JSONL ``id, image`` or ``video, prompt, chosen, rejected``; rows sharing an ``id`` are one prompt group | mcq / long / short / safety / video (keyword in the media path) |
| ``multimodal-rewardbench`` | one JSON array of ``ID, Text, Image, Output1, Output2, Better, Category`` | the official script's: ``Category``, with ``safety`` split into bias (``ID`` starts with ``pairs``) / toxicity and ``reasoning`` into math (``ID`` starts with ``math``) / coding |
| ``rewardbench`` | text-only ``prompt, chosen, rejected, subset, id`` (JSONL, Parquet, or a ``datasets`` dataset) | its four sections (Chat, Chat Hard, Safety, Reasoning) over 23 subsets |
| ``preference`` | generic ``prompt, chosen, rejected`` + optional ``images``/``image``, ``id``, ``category``, ``group`` (JSONL, JSON, Parquet, ``datasets``) | the ``category`` column, else ``all`` |

Media: a reference is read by the one source classifier, :func:`mmrm.rm.media.classify_source`, as
the scorer will read it: a data URI, bare base64 or a URL passes unchanged (the scorer's media policy
decides on it, and refuses every scheme but http(s)); only a path is resolved, relative to
``MediaOptions.image_root`` (default: the data file's folder). A missing file is never skipped silently: by default the loader
refuses (:class:`MissingMedia`, with the count and the fix); with ``missing="placeholder"`` it puts a
generated image in its place and lists the reference in ``EvalItem.placeholder_media``, and every
result scored from that item is marked.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

from mmrm.eval.items import EvalItem, KeyMaker, Order, Side, chosen_side, make_pair
from mmrm.rm.errors import InvalidInput
from mmrm.rm.media import classify_source, to_data_uri
from mmrm.rm.types import Message, as_response
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LOADERS",
    "REWARDBENCH_EXAMPLE_COUNTS",
    "REWARDBENCH_SECTIONS",
    "VLRB_SOURCES",
    "MediaOptions",
    "MissingMedia",
    "load_benchmark",
    "load_mm_rlhf_rewardbench",
    "load_multimodal_rewardbench",
    "load_preference",
    "load_rewardbench",
    "load_vl_rewardbench",
    "placeholder_image",
    "read_rows",
]

Source = Union[str, Path, Iterable[Mapping[str, Any]], Any]  # a path, rows, or a datasets.Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


class MissingMedia(InvalidInput):
    """Media referenced by a benchmark are not on disk (and placeholders were not asked for)."""

    kind = "missing_media"


class MediaOptions(BaseModel):
    """Where benchmark media live and what to do when they are missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_root: Path | None = Field(default=None, description="Folder media paths are relative to (default: the data file's folder).")
    missing: Literal["refuse", "placeholder"] = Field(
        default="refuse", description="refuse: raise MissingMedia; placeholder: substitute generated images and mark the items."
    )
    inline: bool = Field(default=False, description="Embed local files as data URIs (for scoring on a remote service).")


# --------------------------------------------------------------------------------------------------
# Reading rows


def read_rows(source: Source) -> list[dict[str, Any]]:
    """Rows of a JSONL / JSON-array / Parquet file, a saved ``datasets`` folder, a ``datasets.Dataset``,
    or an iterable of dicts."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                raise InvalidInput(f"{p} holds several splits {sorted(ds)}; pass one split's folder", field="source")
            return [dict(r) for r in ds]
        if not p.is_file():
            raise InvalidInput(f"benchmark file {p} does not exist", field="source")
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
        text = p.read_text(encoding="utf-8")
        if suffix == ".json" or text.lstrip().startswith("["):
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise InvalidInput(f"{p}: expected a JSON array of rows", field="source")
            return [dict(r) for r in data]
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InvalidInput(f"{p}:{n}: not JSON: {e}", field="source") from e
        return rows
    return [dict(r) for r in source]


def _default_root(source: Source) -> Path | None:
    if isinstance(source, (str, Path)):
        p = Path(source)
        return p if p.is_dir() else p.parent
    return None


def _need(row: Mapping[str, Any], fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise InvalidInput(f"{where}: missing field(s) {missing}; has {sorted(row)}", field=where, limit=list(fields))


# --------------------------------------------------------------------------------------------------
# Media


@functools.lru_cache(maxsize=4096)
def placeholder_image(ref: str, size: tuple[int, int] = (64, 64)) -> str:
    """A generated PNG (data URI) standing in for the missing media ``ref``: deterministic, distinct per ref."""
    from PIL import Image, ImageDraw

    h = hashlib.sha256(ref.encode("utf-8")).digest()
    img = Image.new("RGB", size, (h[0], h[1], h[2]))
    draw = ImageDraw.Draw(img)
    step = 4 + h[3] % 8
    for x in range(-size[1], size[0], step * 2):
        draw.line([(x, 0), (x + size[1], size[1])], fill=(h[4], h[5], h[6]), width=step)
    return to_data_uri(img)


def _is_inline_or_url(ref: str) -> bool:
    """Whether ``ref`` is media itself or a URL (passed on unchanged) rather than a local path."""
    # An empty reference is a missing file here (the loader's refusal names the benchmark's fix).
    return bool(ref.strip()) and classify_source(ref).kind != "path"


def _data_uri(path: Path) -> str:
    return to_data_uri(path.read_bytes())


def _image_value(value: Any) -> str | None:
    """A media source from a row value: a string, a ``datasets`` image dict, or a PIL image."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return to_data_uri(bytes(value["bytes"]))
        return value.get("path")
    if hasattr(value, "save"):  # a PIL image (datasets decodes Image features to these)
        return to_data_uri(value)  # lossless, alpha kept: the media loader composites it on white
    raise InvalidInput(f"cannot read an image from a {type(value).__name__}", field="image")


class _Media:
    """Resolves media references for one load; collects missing ones to refuse or replace them."""

    def __init__(self, options: MediaOptions | None, default_root: Path | None, benchmark: str) -> None:
        self.opts = options or MediaOptions()
        self.root = self.opts.image_root if self.opts.image_root is not None else default_root
        self.benchmark = benchmark
        self.missing: list[str] = []

    def _path(self, ref: str) -> Path:
        p = Path(ref)
        return p if p.is_absolute() or self.root is None else self.root / p

    def image(self, ref: str, used: list[str]) -> dict[str, Any]:
        """An ``image_url`` part for ``ref``; records a placeholder in ``used`` if it is missing."""
        if _is_inline_or_url(ref):
            return {"type": "image_url", "image_url": {"url": ref}}
        path = self._path(ref)
        if path.is_file():
            url = _data_uri(path) if self.opts.inline else str(path.resolve())
            return {"type": "image_url", "image_url": {"url": url}}
        self.missing.append(ref)
        used.append(ref)
        return {"type": "image_url", "image_url": {"url": placeholder_image(ref)}}

    def video(self, ref: str, used: list[str], n_placeholder_frames: int = 4) -> dict[str, Any]:
        """A ``video`` part: a folder of frames, a video file, or placeholders if missing."""
        if _is_inline_or_url(ref):
            return {"type": "video", "video": ref}
        path = self._path(ref)
        if path.is_dir():
            frames = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if frames:
                srcs = [_data_uri(f) if self.opts.inline else str(f.resolve()) for f in frames]
                return {"type": "video", "video": srcs}
        elif path.is_file():
            return {"type": "video", "video": _data_uri(path) if self.opts.inline else str(path.resolve())}
        self.missing.append(ref)
        used.append(ref)
        return {"type": "video", "video": [placeholder_image(f"{ref}#{i}") for i in range(n_placeholder_frames)]}

    def parts_in(self, messages: list[dict[str, Any]], used: list[str]) -> list[dict[str, Any]]:
        """Resolve relative local image/video references inside chat messages."""
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                new = []
                for part in content:
                    if isinstance(part, Mapping) and part.get("type", "image_url" if "image_url" in part else None) == "image_url":
                        url = part["image_url"]["url"] if isinstance(part["image_url"], Mapping) else part["image_url"]
                        new.append(self.image(url, used))
                    elif isinstance(part, Mapping) and part.get("type") == "video" and isinstance(part.get("video"), str):
                        new.append(self.video(part["video"], used))
                    else:
                        new.append(part)
                m = {**m, "content": new}
            out.append(m)
        return out

    def finish(self, n_items: int) -> None:
        if not self.missing or self.opts.missing == "placeholder":
            return
        uniq = list(dict.fromkeys(self.missing))
        where = f"under {self.root}" if self.root is not None else "(no image root given)"
        raise MissingMedia(
            f"{len(uniq)} media file(s) referenced by {len(self.missing)} place(s) in {n_items} {self.benchmark} rows "
            f"are missing {where}, e.g. {uniq[:3]}. Point image_root (--image-root) at the benchmark's media, or ask "
            "for generated placeholders (missing='placeholder', --placeholder-images): every such result is then "
            "marked, and its numbers do not measure the benchmark.",
            field="image_root",
            limit="existing media files",
        )


def _user_turn(text: str, media_parts: list[dict[str, Any]]) -> list[Message]:
    if not media_parts:
        return [Message(role="user", content=text)]
    return [Message.model_validate({"role": "user", "content": [*media_parts, {"type": "text", "text": text}]})]


def _finish(items: list[EvalItem], limit: int | None) -> list[EvalItem]:
    return items[:limit] if limit is not None else items


# --------------------------------------------------------------------------------------------------
# VL-RewardBench

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


def load_vl_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """VL-RewardBench rows -> items. Its pairs are stored chosen-first, so the default ``order`` is
    ``random`` (a judge must not learn that A is always right); reward models are order-blind."""
    rows = read_rows(source)
    res = _Media(media, _default_root(source), "vl-rewardbench")
    keys = KeyMaker()
    items = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        if "query" in row and "response" in row:  # the dataset release: two responses + ranking
            _need(row, ("id", "query", "response", "ranking"), where)
            ranking = list(row["ranking"])
            best, worst = ranking.index(min(ranking)), ranking.index(max(ranking))
            if best == worst:
                raise InvalidInput(f"{where}: ranking {ranking} does not order the two responses", field=f"{where}.ranking")
            text, chosen, rejected = row["query"], row["response"][best], row["response"][worst]
        else:
            _need(row, ("id", "prompt", "chosen", "rejected"), where)
            text, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        image = _image_value(row.get("image"))
        src, category = vlrb_source(str(row["id"]), row.get("image_path"))
        key = keys(str(row["id"]), text, chosen, rejected, image if image and len(image) < 4096 else content_of(image))
        used: list[str] = []
        media_parts = [res.image(image, used)] if image else []
        side = chosen_side(order, key, seed)
        pair = make_pair(_user_turn(text, media_parts), as_response(chosen), as_response(rejected), side)
        items.append(EvalItem(benchmark="vl-rewardbench", key=key, source_id=str(row["id"]), index=i, pair=pair,
                              chosen=side, category=category, subset=src, placeholder_media=used))
    res.finish(len(rows))
    return _finish(items, limit)


def content_of(value: str | None) -> str | None:
    """A short stand-in for a long inline media value in keys (its hash)."""
    return None if value is None else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# MM-RLHF-RewardBench

#: Category keywords of the official MM-RLHF-RewardBench scorer, tried in this order against the
#: row's image or video path (first match wins).
MMRLHF_CATEGORIES = ("mcq", "long", "short", "safety", "video")


def load_mm_rlhf_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """MM-RLHF-RewardBench rows -> items; rows sharing an ``id`` form one prompt group (Acc+)."""
    rows = read_rows(source)
    res = _Media(media, _default_root(source), "mm-rlhf-rewardbench")
    keys = KeyMaker()
    items = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        _need(row, ("id", "prompt", "chosen", "rejected"), where)
        image, video = row.get("image") or "", row.get("video") or ""
        if not image and not video:
            raise InvalidInput(f"{where}: neither 'image' nor 'video' is set", field=f"{where}.image")
        ref = image or video
        category = next((k for k in MMRLHF_CATEGORIES if k in ref), "other")
        key = keys(str(row["id"]), row["prompt"], row["chosen"], row["rejected"], ref)
        used: list[str] = []
        part = res.image(ref, used) if image else res.video(ref, used)
        side = chosen_side(order, key, seed)
        pair = make_pair(_user_turn(row["prompt"], [part]), as_response(row["chosen"]), as_response(row["rejected"]), side)
        items.append(EvalItem(benchmark="mm-rlhf-rewardbench", key=key, source_id=str(row["id"]), index=i, pair=pair,
                              chosen=side, category=category, subset="video" if video else "image",
                              group=str(row["id"]), placeholder_media=used))
    res.finish(len(rows))
    return _finish(items, limit)


# --------------------------------------------------------------------------------------------------
# Multimodal RewardBench (facebookresearch/multimodal_rewardbench, data/all_data.json)

MMRB_CATEGORIES = (
    "open_generation/correctness_task", "open_generation/preference_task", "knowledge",
    "reasoning/math", "reasoning/coding", "safety/bias", "safety/toxicity", "vqa",
)


def mmrb_category(row_id: str, category: str) -> str:
    """The category the official ``scripts/2_get_accuracy.py`` reports a row under."""
    if category == "safety":
        return "safety/bias" if row_id.lower().startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if row_id.lower().startswith("math") else "reasoning/coding"
    return category


def load_multimodal_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "as_stored",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """Multimodal RewardBench's JSON array -> items. ``as_stored`` shows Output1 as A, Output2 as B,
    exactly as the official judge script; ``Better`` says which one humans preferred."""
    rows = read_rows(source)
    res = _Media(media, _default_root(source), "multimodal-rewardbench")
    keys = KeyMaker()
    items = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        _need(row, ("ID", "Text", "Image", "Output1", "Output2", "Better"), where)
        better = row["Better"]
        if better not in ("Output1", "Output2"):
            raise InvalidInput(f"{where}: Better must be 'Output1' or 'Output2', got {better!r}", field=f"{where}.Better",
                               limit=["Output1", "Output2"])
        raw_cat = row.get("Category") or (row.get("Meta") or {}).get("Category")
        if not raw_cat:
            raise InvalidInput(f"{where}: no Category", field=f"{where}.Category")
        stored: Side = "a" if better == "Output1" else "b"
        chosen, rejected = (row["Output1"], row["Output2"]) if stored == "a" else (row["Output2"], row["Output1"])
        key = keys(str(row["ID"]), row["Text"], row["Output1"], row["Output2"], better, row["Image"])
        used: list[str] = []
        image = _image_value(row["Image"])
        parts = [res.image(image, used)] if image else []
        side = chosen_side(order, key, seed, stored=stored)
        pair = make_pair(_user_turn(row["Text"], parts), as_response(chosen), as_response(rejected), side)
        items.append(EvalItem(benchmark="multimodal-rewardbench", key=key, source_id=str(row["ID"]), index=i, pair=pair,
                              chosen=side, category=mmrb_category(str(row["ID"]), raw_cat), subset=raw_cat,
                              placeholder_media=used))
    res.finish(len(rows))
    return _finish(items, limit)


# --------------------------------------------------------------------------------------------------
# RewardBench v1 (allenai/reward-bench: rewardbench/constants.py)

#: Example counts used by RewardBench's own section scoring (``EXAMPLE_COUNTS``), as in the current
#: allenai/reward-bench (xstest counts fixed in its PR #175; ``math-prm`` is up-weighted to 984, its
#: own comment: "actual length 447, upweighting to be equal to code").
REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}

#: RewardBench's four sections (``SUBSET_MAPPING``).
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
_RB_SECTION_OF = {s: sec for sec, subs in REWARDBENCH_SECTIONS.items() for s in subs}


def load_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """RewardBench (v1, text-only) rows -> items; category = section, subset = RewardBench subset.

    Subsets outside the 23 of the four sections (the prior preference sets) get category ``other``
    and do not enter the section scores.
    """
    del media  # text-only
    rows = read_rows(source)
    keys = KeyMaker()
    items = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        _need(row, ("prompt", "chosen", "rejected", "subset"), where)
        rid = str(row.get("id", i))
        key = keys(rid, row["prompt"], row["chosen"], row["rejected"], row["subset"])
        side = chosen_side(order, key, seed)
        pair = make_pair(_user_turn(row["prompt"], []), as_response(row["chosen"]), as_response(row["rejected"]), side)
        items.append(EvalItem(benchmark="rewardbench", key=key, source_id=rid, index=i, pair=pair, chosen=side,
                              category=_RB_SECTION_OF.get(row["subset"], "other"), subset=row["subset"]))
    return _finish(items, limit)


# --------------------------------------------------------------------------------------------------
# Generic preference pairs


def load_preference(
    source: Source,
    *,
    benchmark: str = "preference",
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """Generic rows: ``prompt`` (a string or chat messages), ``chosen``, ``rejected`` (a string,
    content parts or an assistant message), optional ``images`` (list) or ``image`` (one reference)
    shown before a string prompt, ``id``, ``category`` and ``group`` (prompt group for Acc+).

    The digits demo's ``eval.jsonl`` is this format.
    """
    rows = read_rows(source)
    res = _Media(media, _default_root(source), benchmark)
    keys = KeyMaker()
    items = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        _need(row, ("prompt", "chosen", "rejected"), where)
        rid = str(row.get("id", i))
        refs = row.get("images") or ([row["image"]] if row.get("image") else [])
        refs = [_image_value(r) for r in refs]
        key = keys(rid, row["prompt"], row["chosen"], row["rejected"], [r if r and len(r) < 4096 else content_of(r) for r in refs])
        used: list[str] = []
        try:
            if isinstance(row["prompt"], str):
                prompt = _user_turn(row["prompt"], [res.image(r, used) for r in refs if r])
            else:
                prompt = [Message.model_validate(m) for m in res.parts_in(list(row["prompt"]), used)]
            chosen, rejected = (_response(res, r, used) for r in (row["chosen"], row["rejected"]))
        except (ValueError, TypeError) as e:
            raise InvalidInput(f"{where}: {e}", field=where) from e
        side = chosen_side(order, key, seed)
        items.append(EvalItem(benchmark=benchmark, key=key, source_id=rid, index=i,
                              pair=make_pair(prompt, chosen, rejected, side), chosen=side,
                              category=str(row.get("category") or "all"),
                              group=str(row["group"]) if row.get("group") is not None else None,
                              placeholder_media=used))
    res.finish(len(rows))
    return _finish(items, limit)


def _response(res: _Media, value: Any, used: list[str]) -> Message:
    """A response given as a string, content parts or a message, with local media resolved."""
    if isinstance(value, list):
        value = res.parts_in([{"content": value}], used)[0]["content"]
    elif isinstance(value, Mapping) and isinstance(value.get("content"), list):
        value = res.parts_in([dict(value)], used)[0]
    return as_response(value)


# --------------------------------------------------------------------------------------------------

LOADERS: dict[str, Callable[..., list[EvalItem]]] = {
    "vl-rewardbench": load_vl_rewardbench,
    "mm-rlhf-rewardbench": load_mm_rlhf_rewardbench,
    "multimodal-rewardbench": load_multimodal_rewardbench,
    "rewardbench": load_rewardbench,
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

