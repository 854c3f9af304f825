"""Benchmark loaders on real rows (the shared VL-RewardBench and MM-RLHF-RewardBench files) and on
rows shaped exactly like the published formats of Multimodal RewardBench and RewardBench v1.

No real rows of the last two are available here: their fixtures below follow the field names and
conventions of the benchmarks' own scripts (facebookresearch/multimodal_rewardbench
``scripts/1_run_model_as_judge_gpt4o.py`` / ``2_get_accuracy.py`` and ``outputs/example.jsonl``;
allenai/reward-bench ``rewardbench/constants.py`` and ``scripts/run_rm.py``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from mmrm.eval.loaders import (
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SECTIONS,
    MediaOptions,
    MissingMedia,
    load_benchmark,
    load_mm_rlhf_rewardbench,
    load_multimodal_rewardbench,
    load_preference,
    load_rewardbench,
    load_vl_rewardbench,
    vlrb_source,
)
from mmrm.rm.errors import InvalidInput
from mmrm.rm.types import ImagePart, VideoPart

REPO = Path(__file__).resolve().parents[1]


VENDORED = REPO / "data" / "benchmarks"
SHARED = REPO.parent / "shared" / "data"


def shared_data() -> Path:
    """The real benchmark files: $MMRM_SHARED_DATA, else the copy vendored in data/benchmarks/,
    else ../shared/data beside the repository. Missing data FAILS the test, never skips it."""
    env = os.environ.get("MMRM_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [VENDORED, SHARED]
    for c in candidates:
        if (c / "vl_rewardbench" / "data.jsonl").is_file():
            return c
    pytest.fail(f"shared benchmark data not found in {[str(c) for c in candidates]}; set MMRM_SHARED_DATA "
                "to the folder holding vl_rewardbench/ and mm_rlhf_rewardbench/")


PLACEHOLDERS = MediaOptions(missing="placeholder")


@pytest.fixture(scope="module")
def vlrb() -> list:
    return load_vl_rewardbench(shared_data() / "vl_rewardbench" / "data.jsonl", media=PLACEHOLDERS)


# ------------------------------------------------------------------------------------------------
# VL-RewardBench (real rows)


def test_vlrb_category_counts_match_the_official_split(vlrb: list) -> None:
    # The paper: 183 general (WildVision, VLFeedback), 749 hallucination (POVID, RLAIF-V, RLHF-V),
    # 318 reasoning (MMMU-Pro, MathVerse) = 1,250.
    assert len(vlrb) == 1250
    assert Counter(it.category for it in vlrb) == {"general": 183, "hallucination": 749, "reasoning": 318}
    assert Counter(it.subset for it in vlrb) == {
        "povid": 448, "rlaif-v": 233, "rlhf-v": 68, "reasoning_tasks": 318, "wildvision-battle": 173, "vlfeedback": 10}
    # the trap: upper-case ids of RLAIF-V / RLHF-V are hallucination sources, not general
    assert all(it.category == "hallucination" for it in vlrb if it.source_id.startswith(("RLAIF-V", "RLHF-V")))
    assert vlrb_source("jailbreak-typo-HateSpeech-70") == ("vlfeedback", "general")
    assert vlrb_source("x", "vl_reward/povid/1.jpg") == ("povid", "hallucination")  # the release's image_path


def test_vlrb_keys_are_unique_although_ids_are_not(vlrb: list) -> None:
    ids = Counter(it.source_id for it in vlrb)
    assert len(ids) == 1225 and sum(n > 1 for n in ids.values()) == 25
    assert len({it.key for it in vlrb}) == 1250
    again = load_vl_rewardbench(shared_data() / "vl_rewardbench" / "data.jsonl", media=PLACEHOLDERS)
    assert [it.key for it in again] == [it.key for it in vlrb]  # stable across loads


def test_vlrb_chosen_first_rows_are_shown_in_random_order(vlrb: list) -> None:
    sides = Counter(it.chosen for it in vlrb)
    assert 0.45 < sides["a"] / len(vlrb) < 0.55
    raw = [json.loads(line) for line in (shared_data() / "vl_rewardbench" / "data.jsonl").open()]
    for it, row in zip(vlrb[:50], raw[:50]):
        assert it.chosen_response.text == row["chosen"] and it.rejected_response.text == row["rejected"]
    other_seed = load_vl_rewardbench(shared_data() / "vl_rewardbench" / "data.jsonl", media=PLACEHOLDERS, seed=1)
    assert [it.chosen for it in other_seed] != [it.chosen for it in vlrb]
    first = load_vl_rewardbench(shared_data() / "vl_rewardbench" / "data.jsonl", media=PLACEHOLDERS, order="chosen_first", limit=20)
    assert {it.chosen for it in first} == {"a"}


def test_vlrb_missing_images_are_refused_by_default() -> None:
    with pytest.raises(MissingMedia) as e:
        load_vl_rewardbench(shared_data() / "vl_rewardbench" / "data.jsonl")
    msg = str(e.value)
    assert "1250 media file(s)" in msg and "vl_reward/img/image_0.jpg" in msg and "placeholder" in msg


def test_vlrb_placeholders_only_when_asked_and_marked(vlrb: list) -> None:
    raw = [json.loads(line) for line in (shared_data() / "vl_rewardbench" / "data.jsonl").open()]
    assert all(it.placeholder_media == [row["image"]] for it, row in zip(vlrb, raw))
    part = vlrb[0].pair.prompt[0].content[0]
    assert isinstance(part, ImagePart) and part.url.startswith("data:image/png;base64,")


def test_vlrb_real_images_are_used_when_present(tmp_path: Path) -> None:
    from PIL import Image

    rows = [json.loads(line) for line, _ in zip((shared_data() / "vl_rewardbench" / "data.jsonl").open(), range(3))]
    for r in rows:
        (tmp_path / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / r["image"])
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_vl_rewardbench(tmp_path / "d.jsonl")
    assert not any(it.uses_placeholders for it in items)
    assert items[0].pair.prompt[0].content[0].url == str((tmp_path / rows[0]["image"]).resolve())
    inline = load_vl_rewardbench(tmp_path / "d.jsonl", media=MediaOptions(inline=True))
    assert inline[0].pair.prompt[0].content[0].url.startswith("data:image/jpeg;base64,")


def test_vlrb_release_format_with_ranking(tmp_path: Path) -> None:
    # The dataset release stores two responses and a ranking (0 = better), not chosen/rejected.
    row = {"id": "RLHF-V-1", "query": "What is shown?", "response": ["a cat", "a dog"], "ranking": [1, 0],
           "image": "x.jpg"}
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    (it,) = load_vl_rewardbench(tmp_path / "r.jsonl", media=PLACEHOLDERS)
    assert it.chosen_response.text == "a dog" and it.rejected_response.text == "a cat"
    assert it.category == "hallucination"


# ------------------------------------------------------------------------------------------------
# MM-RLHF-RewardBench (real rows)


def test_mm_rlhf_groups_and_categories() -> None:
    items = load_mm_rlhf_rewardbench(shared_data() / "mm_rlhf_rewardbench" / "mm_reward_bench.jsonl", media=PLACEHOLDERS)
    assert len(items) == 170 and len({it.key for it in items}) == 170
    assert len({it.group for it in items}) == 46
    assert Counter(it.category for it in items) == {"mcq": 42, "long": 37, "short": 34, "safety": 32, "video": 25}
    assert Counter(Counter(it.group for it in items).values()) == {3: 13, 5: 11, 2: 11, 4: 6, 6: 5}
    video = [it for it in items if it.subset == "video"]
    assert len(video) == 25 and all(isinstance(it.pair.prompt[0].content[0], VideoPart) for it in video)
    assert all(it.uses_placeholders for it in items)
    with pytest.raises(MissingMedia):
        load_mm_rlhf_rewardbench(shared_data() / "mm_rlhf_rewardbench" / "mm_reward_bench.jsonl")


def test_mm_rlhf_video_folder_of_frames(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "video" / "clip").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (i, i, i)).save(tmp_path / "video" / "clip" / f"{i:03d}.jpg")
    row = {"id": "v1", "video": "video/clip", "prompt": "What happens?", "chosen": "x", "rejected": "y"}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    (it,) = load_mm_rlhf_rewardbench(tmp_path / "m.jsonl")
    part = it.pair.prompt[0].content[0]
    assert isinstance(part, VideoPart) and [Path(f).name for f in part.video] == ["000.jpg", "001.jpg", "002.jpg"]
    assert it.category == "video" and not it.uses_placeholders


# ------------------------------------------------------------------------------------------------
# Multimodal RewardBench (rows shaped like data/all_data.json)

MMRB_ROWS = [
    {"ID": "nocaps_13062", "Text": "Please generate a detailed caption of this image. Please be as descriptive as possible.",
     "Image": "images/nocaps/13062.jpg", "Output1": "A teapot on a table.", "Output2": "A marbled ceramic teapot with a stylized flower on its handle.",
     "Better": "Output2", "Category": "open_generation/correctness_task"},
    {"ID": "visitbench_235", "Text": "Write a short poem about the scene.", "Image": "images/visitbench/235.jpg",
     "Output1": "Waves at dusk...", "Output2": "A city at noon...", "Better": "Output1", "Category": "open_generation/preference_task"},
    {"ID": "mmmu-s_12", "Text": "Answer the preceding multiple choice question.", "Image": "images/mmmu-s/12.jpg",
     "Output1": "Answer: B", "Output2": "Answer: C", "Better": "Output2", "Category": "knowledge"},
    {"ID": "mathvista_101", "Text": "Think step by step.", "Image": "images/mathvista/101.jpg",
     "Output1": "**3**", "Output2": "**4**", "Better": "Output1", "Category": "reasoning"},
    {"ID": "EMMA-Coding_7", "Text": "What code snippet draws this?", "Image": "images/EMMA-Coding/7_0.png",
     "Output1": "plt.bar(...)", "Output2": "plt.plot(...)", "Better": "Output2", "Category": "reasoning"},
    {"ID": "pairs_3", "Text": "Who is more likely the doctor?", "Image": "images/pairs/3.png",
     "Output1": "I cannot tell from appearance.", "Output2": "The man.", "Better": "Output1", "Category": "safety"},
    {"ID": "hatefulmemes_9", "Text": "Explain this meme.", "Image": "images/hatefulmemes/9.png",
     "Output1": "It mocks a group.", "Output2": "It is funny.", "Better": "Output1", "Category": "safety"},
    {"ID": "RealworldQA_5", "Text": "How many cars?", "Image": "images/RealworldQA/5.jpg",
     "Output1": "2", "Output2": "3", "Better": "Output2", "Category": "vqa"},
]


@pytest.fixture()
def mmrb_file(tmp_path: Path) -> Path:
    from PIL import Image

    data = tmp_path / "data"
    for r in MMRB_ROWS:
        (data / r["Image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (28, 28), (200, 10, 10)).save(data / r["Image"])
    (data / "all_data.json").write_text(json.dumps(MMRB_ROWS, indent=2))
    return data / "all_data.json"


def test_mmrb_format_and_official_categories(mmrb_file: Path) -> None:
    items = load_multimodal_rewardbench(mmrb_file)
    assert [it.category for it in items] == [
        "open_generation/correctness_task", "open_generation/preference_task", "knowledge",
        "reasoning/math", "reasoning/coding", "safety/bias", "safety/toxicity", "vqa"]
    # as stored: Output1 is A, Output2 is B, exactly as the official judge prompt shows them
    for it, row in zip(items, MMRB_ROWS):
        assert it.pair.response_a.text == row["Output1"] and it.pair.response_b.text == row["Output2"]
        assert it.chosen == ("a" if row["Better"] == "Output1" else "b")
        assert it.pair.prompt[0].content[0].url == str((mmrb_file.parent / row["Image"]).resolve())
    assert [it.index for it in items] == list(range(len(MMRB_ROWS)))


def test_mmrb_bad_label_is_refused(tmp_path: Path) -> None:
    bad = [{**MMRB_ROWS[0], "Better": "A"}]
    (tmp_path / "all_data.json").write_text(json.dumps(bad))
    with pytest.raises(InvalidInput, match="Better must be"):
        load_multimodal_rewardbench(tmp_path / "all_data.json", media=PLACEHOLDERS)


# ------------------------------------------------------------------------------------------------
# RewardBench v1 (rows shaped like allenai/reward-bench's filtered split)


def rewardbench_rows() -> list[dict]:
    rows, i = [], 0
    for subsets in REWARDBENCH_SECTIONS.values():
        for s in subsets:
            for k in range(2):
                rows.append({"prompt": f"[{s}] question {k}", "chosen": f"good answer {k}", "chosen_model": "gpt-4",
                             "rejected": f"bad {k}", "rejected_model": "llama", "subset": s, "id": i})
                i += 1
    return rows


def test_rewardbench_sections_from_jsonl_parquet_and_datasets(tmp_path: Path) -> None:
    import datasets

    rows = rewardbench_rows()
    assert set(REWARDBENCH_EXAMPLE_COUNTS) == {s for subs in REWARDBENCH_SECTIONS.values() for s in subs}
    (tmp_path / "rb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "rb.parquet"))
    ds.save_to_disk(str(tmp_path / "rb_saved"))
    loaded = [load_rewardbench(tmp_path / "rb.jsonl"), load_rewardbench(tmp_path / "rb.parquet"),
              load_rewardbench(tmp_path / "rb_saved"), load_benchmark("rewardbench", ds)]
    for items in loaded:
        assert [it.key for it in items] == [it.key for it in loaded[0]]
        assert Counter(it.category for it in items) == {"Chat": 10, "Chat Hard": 12, "Safety": 10, "Reasoning": 14}
        assert all(not it.has_media for it in items)
    it = loaded[0][0]
    assert it.subset == "alpacaeval-easy" and it.source_id == "0" and it.chosen_response.text == "good answer 0"


# ------------------------------------------------------------------------------------------------
# Generic format


def test_generic_digits_rows_with_real_images(digits_eval_data: Path) -> None:
    items = load_preference(digits_eval_data)
    rows = [json.loads(line) for line in digits_eval_data.open()]
    assert len(items) == len(rows) == 30
    for it, row in zip(items, rows):
        assert it.pair.prompt[0].content[0].url == str((digits_eval_data.parent / row["images"][0]).resolve())
        assert it.chosen_response.text == row["chosen"] and it.category == row["category"] == f"digit {row['chosen'][-2]}" and not it.uses_placeholders


def test_generic_messages_prompt_groups_and_image_responses(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "q.png")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "edit.png")
    rows = [{"id": "e1", "group": "g", "category": "edit",
             "prompt": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "q.png"}},
                                                     {"type": "text", "text": "Make it red."}]}],
             "chosen": [{"type": "image_url", "image_url": {"url": "edit.png"}}], "rejected": "I cannot."}]
    (tmp_path / "p.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (it,) = load_preference(tmp_path / "p.jsonl", order="chosen_first")
    assert it.group == "g" and it.category == "edit"
    assert it.pair.prompt[0].content[0].url == str((tmp_path / "q.png").resolve())
    assert it.pair.response_a.content[0].url == str((tmp_path / "edit.png").resolve())
    (tmp_path / "edit.png").unlink()
    with pytest.raises(MissingMedia):
        load_preference(tmp_path / "p.jsonl")
    (it,) = load_preference(tmp_path / "p.jsonl", media=PLACEHOLDERS)
    assert it.placeholder_media == ["edit.png"]


def test_identical_rows_get_distinct_stable_keys(tmp_path: Path) -> None:
    row = {"id": "same", "prompt": "p", "chosen": "c", "rejected": "r"}
    (tmp_path / "d.jsonl").write_text((json.dumps(row) + "\n") * 3)
    keys = [it.key for it in load_preference(tmp_path / "d.jsonl")]
    assert len(set(keys)) == 3 and keys[1] == keys[0] + "~2" and keys[2] == keys[0] + "~3"


def test_unknown_benchmark_and_missing_fields(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown benchmark"):
        load_benchmark("nope", tmp_path / "x.jsonl")
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(InvalidInput, match="rejected"):
        load_preference(tmp_path / "d.jsonl")


@pytest.mark.parametrize("rel", ["vl_rewardbench/data.jsonl", "mm_rlhf_rewardbench/mm_reward_bench.jsonl"])
def test_vendored_rows_match_the_shared_copy(rel: str) -> None:
    if not (SHARED / rel).is_file():
        pytest.skip("no shared data beside this checkout to compare the vendored copy with")
    assert (VENDORED / rel).read_bytes() == (SHARED / rel).read_bytes()


def test_media_references_are_read_by_the_one_source_classifier(tmp_path: Path) -> None:
    # Bare base64 is media, not a file name (it used to be looked up as a path under the image root:
    # missing, or an OSError for a name longer than the file system allows); a URL of any scheme is
    # passed on for the scorer's media policy to judge; only a path is resolved.
    import base64
    import io

    import numpy as np
    from PIL import Image

    from mmrm.rm.errors import MediaForbidden
    from mmrm.rm.media import MediaLoader, MediaPolicy

    arr = np.random.default_rng(7).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    bare = base64.b64encode(buf.getvalue()).decode("ascii")
    assert len(bare) > 4096  # longer than any file name
    Image.fromarray(arr).save(tmp_path / "local.png")
    refs = [bare, "file:///etc/passwd", "local.png"]
    rows = [{"id": f"r{i}", "prompt": "Which?", "chosen": "a", "rejected": "b", "image": ref} for i, ref in enumerate(refs)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    items = load_vl_rewardbench(tmp_path / "d.jsonl")  # missing media are refused: none is missing
    urls = [it.pair.prompt[0].content[0].url for it in items]
    assert urls == [bare, "file:///etc/passwd", str((tmp_path / "local.png").resolve())]
    assert not any(it.uses_placeholders for it in items)
    loader = MediaLoader(MediaPolicy(allowed_roots=[tmp_path]))
    assert (np.asarray(loader.load_image(urls[0])) == arr).all()
    assert (np.asarray(loader.load_image(urls[2])) == arr).all()
    with pytest.raises(MediaForbidden):
        loader.load_image(urls[1])

    # Inlined files keep their bytes; the MIME type comes from the bytes, not the file name.
    (tmp_path / "named.jpg").write_bytes(buf.getvalue())  # a PNG behind a .jpg name
    rows = [{"id": "x", "prompt": "Which?", "chosen": "a", "rejected": "b", "image": "named.jpg"}]
    (tmp_path / "e.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (it,) = load_vl_rewardbench(tmp_path / "e.jsonl", media=MediaOptions(inline=True))
    assert it.pair.prompt[0].content[0].url == "data:image/png;base64," + bare


# ------------------------------------------------------------------------------------------------
# One assembly path: limit before media


def test_limit_is_applied_before_media_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrm.eval.loaders.media import MediaResolver
    from PIL import Image

    rows = [json.loads(line) for line, _ in zip((shared_data() / "vl_rewardbench" / "data.jsonl").open(), range(3))]
    for r in rows[:2]:
        (tmp_path / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / r["image"])
    rows[2]["image"] = "vl_reward/img/not-there.jpg"  # missing, beyond the limit
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen: list = []
    real = MediaResolver.image

    def spy(self, value, used):  # noqa: ANN001, ANN202
        seen.append(value)
        return real(self, value, used)

    monkeypatch.setattr(MediaResolver, "image", spy)
    items = load_vl_rewardbench(tmp_path / "d.jsonl", limit=2)
    assert len(items) == 2 and not any(it.uses_placeholders for it in items)
    assert seen == [rows[0]["image"], rows[1]["image"]]  # the third row's image was never looked at
    with pytest.raises(MissingMedia, match="not-there.jpg"):
        load_vl_rewardbench(tmp_path / "d.jsonl")  # without the limit it is refused
    # the limit keeps the keys of the rows it keeps
    assert [it.key for it in items] == [it.key for it in load_vl_rewardbench(tmp_path / "d.jsonl", media=PLACEHOLDERS)[:2]]


@pytest.mark.parametrize("loader", ["vl-rewardbench", "mm-rlhf-rewardbench", "multimodal-rewardbench", "rewardbench",
                                    "preference", "mmrb2", "mj-bench"])
def test_a_row_of_the_wrong_shape_names_the_missing_field_and_the_release(loader: str, tmp_path: Path) -> None:
    (tmp_path / "t2i.jsonl").write_text(json.dumps({"id": "x", "text": "?"}) + "\n")
    kwargs = {"mj-bench": {"perspective": "safety"}}.get(loader, {})
    with pytest.raises(InvalidInput) as e:
        load_benchmark(loader, tmp_path / "t2i.jsonl", **kwargs)
    msg = str(e.value)
    assert "missing field(s)" in msg and "expected" in msg
