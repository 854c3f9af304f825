"""mmrm's ``vllm`` reward engine against a real vLLM (CPU) pooling server.

The server runs the backbone of a saved text reward checkpoint (tiny Qwen2, through
``backbone_view``); the independent expectation is the ``hf`` engine on the same checkpoint.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from helpers import image_part, image_uri, text_part
from mmrm.rm.errors import ConfigError, UnsupportedInput
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.scorer import Scorer
from mmrm.rm.types import Group, Pair, Sample
from mmrm.rm.vllm_engine import MMRM_FILES, POOLER_CONFIG, VLLMRewardModel, backbone_view

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ATOL = 1e-4
RESPONSES = ["5", "Five, because four plus one is five.", "six", "It is five. " * 12]
PROMPT = [{"role": "system", "content": "You grade answers."}, {"role": "user", "content": "Which number comes after 4?"}]


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2: Path) -> Path:
    return RewardModel.from_backbone(tiny_qwen2, seed=11).save_pretrained(tmp_path_factory.mktemp("vllm-rm") / "rm")


@pytest.fixture(scope="module")
def pooling_server(tmp_path_factory: pytest.TempPathFactory, text_checkpoint: Path):
    sys.path.insert(0, str(Path(__file__).parent))
    import vllm_server as vs

    view = backbone_view(text_checkpoint, tmp_path_factory.mktemp("view") / "backbone")
    server = vs.start_server(view, log_path=tmp_path_factory.mktemp("vllm-pool") / "server.log", served_name="tiny-rm",
                             extra_args=("--runner", "pooling", "--convert", "embed", "--pooler-config", POOLER_CONFIG))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engines(text_checkpoint: Path, pooling_server):
    hf = RewardModel.from_pretrained(text_checkpoint, device="cpu")
    vl = VLLMRewardModel.from_server(text_checkpoint, base_url=pooling_server.base_url, served_model=pooling_server.model)
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
    vl.max_batch_size = 3  # several requests to the server for one call
    try:
        before = vl.forward_calls
        got = vl.rewards([Sample(prompt=PROMPT, response=r) for r in RESPONSES * 2])
        assert vl.forward_calls - before == 3
    finally:
        vl.max_batch_size = 32
    assert got == pytest.approx(hf.rewards([Sample(prompt=PROMPT, response=r) for r in RESPONSES * 2]), abs=ATOL)


def test_vllm_engine_refuses_images_by_field(engines) -> None:
    _, vl = engines
    s = Sample(prompt=[{"role": "user", "content": [image_part(image_uri(28, 28, 1)), text_part("digit?")]}], response="3")
    with pytest.raises(UnsupportedInput) as e:
        vl.encode(s)
    assert e.value.field and e.value.field.startswith("prompt")  # the encoder names the image part
    res = vl.score([s, Sample(prompt="hi", response="hello")])
    assert res[0].invalid is not None and res[0].error_kind == "unsupported_input"
    assert res[1].ok


def test_vllm_engine_server_down_fails_items_not_the_caller(text_checkpoint: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from vllm_server import free_port

    vl = VLLMRewardModel.from_server(text_checkpoint, base_url=f"http://127.0.0.1:{free_port()}/v1",
                                     served_model="tiny-rm", timeout_s=5)
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
    """A Serve app whose model runs on the vllm engine: HTTP scores equal the hf engine's; an
    image item is that item's invalid result naming its field; /v1/rank works (groups are plain samples there)."""
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
        img = {"prompt": [{"role": "user", "content": [image_part(image_uri(28, 28, 2)), text_part("digit?")]}], "response": "3"}
        bad = httpx.post(url + "/v1/score", json={"model": "text-rm", "items": [items[0], img]}, timeout=120)
        assert bad.status_code == 200, bad.text  # the image item fails alone; the text item still scores
        assert bad.json()["data"][0]["value"] == pytest.approx(got[0], abs=ATOL)
        assert bad.json()["data"][1]["error_kind"] == "unsupported_input"
        assert bad.json()["data"][1]["field"].startswith("items[1].prompt")
        rank = httpx.post(url + "/v1/rank", json={"model": "text-rm", "groups": [{"prompt": PROMPT, "responses": RESPONSES}]},
                          timeout=120)
        assert rank.status_code == 200, rank.text
        assert [x["value"] for x in rank.json()["data"][0]["results"]] == pytest.approx(got, abs=ATOL)
    finally:
        serve.delete("vllmengine")
