"""The scoring service on a real local Ray Serve, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import png_data_uri

pytestmark = pytest.mark.slow


def _img_prompt(uri: str, text: str = "Which digit is in the image?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def inproc(service: dict):
    """The same checkpoint scored in-process: the independent expectation for HTTP scores."""
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(service["checkpoint"], device="cpu",
                                       media_policy=MediaPolicy(allowed_roots=[service["media_root"]]))


def _post(service: dict, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(service["url"] + path, json=body, headers={**service["headers"], **kw.pop("headers", {})},
                      timeout=kw.pop("timeout", 120), **kw)


def _samples(n: int = 5) -> list[dict]:
    out = []
    for i in range(n):
        uri = png_data_uri(np.random.default_rng(i).integers(0, 255, (56 + 14 * i, 70, 3), dtype=np.uint8))
        out.append({"prompt": _img_prompt(uri), "response": f"The digit is {i}." + " really" * i})
    out.append({"prompt": "A text-only question?", "response": "A text-only answer."})
    return out


def test_score_over_http_equals_in_process(service: dict, inproc) -> None:
    from mmrm.rm.types import Sample

    items = _samples()
    r = _post(service, "/v1/score", {"model": "tiny", "items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "score" and body["model"] == "tiny" and body["id"].startswith("score-")
    got = [d["value"] for d in body["data"]]
    want = inproc.rewards([Sample.model_validate(s) for s in items])
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-5
    prov = body["data"][0]["provenance"]
    assert prov["fingerprint"] == inproc.fingerprint and prov["kind"] == "reward_model" and prov["dtype"] == "float32"
    assert [d["index"] for d in body["data"]] == list(range(len(items)))


def test_compare_and_rank(service: dict, inproc) -> None:
    from mmrm.rm.types import Sample

    prompt = _img_prompt(png_data_uri(np.full((56, 56, 3), 200, dtype=np.uint8)))
    responses = ["The digit is 1.", "The digit is 7.", "The digit is 3, I think."]
    r = _post(service, "/v1/compare", {"model": "tiny", "pairs": [{"prompt": prompt, "response_a": responses[0], "response_b": responses[1]}]})
    assert r.status_code == 200, r.text
    ra, rb = inproc.rewards([Sample(prompt=prompt, response=x) for x in responses[:2]])
    assert r.json()["data"][0]["prob_a_wins"] == pytest.approx(1 / (1 + math.exp(-(ra - rb))), abs=1e-5)
    # two groups: each runs the replica's shared-prefix path; scores equal the plain path's
    groups = [{"prompt": prompt, "responses": responses},
              {"prompt": "Which digit comes after 4?", "responses": ["5", "Five, since 4 + 1 = 5.", "6"]}]
    r = _post(service, "/v1/rank", {"model": "tiny", "groups": groups})
    assert r.status_code == 200, r.text
    for g_in, g in zip(groups, r.json()["data"]):
        raw = np.array([x["value"] for x in g["results"]])
        want = inproc.rewards([Sample(prompt=g_in["prompt"], response=x) for x in g_in["responses"]])
        assert np.max(np.abs(raw - want)) < 1e-5
        expected = (np.array(want) - np.mean(want)) / (np.std(want) + 1e-6)  # population std, pinned formula
        assert np.max(np.abs(np.array(g["normalized"]) - expected)) < 1e-4


def test_judge_route_with_image_matches_in_process_judge(service: dict) -> None:
    from mmrm.judges.backends.hf import HFJudgeBackend
    from mmrm.judges.judge import Judge, JudgeOptions
    from mmrm.rm.types import Pair, Sample

    prompt = _img_prompt(png_data_uri(np.full((56, 56, 3), 30, dtype=np.uint8)), "Describe the image.")
    items = [{"prompt": prompt, "response": "A dark square."}, {"prompt": "Say hi", "response": "Hi!"}]
    r = _post(service, "/v1/judge", {"judge": "judge", "rubric": "helpfulness", "items": items})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    judge = Judge("helpfulness", HFJudgeBackend(service["judge_model"]), JudgeOptions(min_label_mass=0.0))
    want = judge.score([Sample.model_validate(s) for s in items])
    for d, w in zip(data, want):
        assert d["provenance"]["kind"] == "judge" and d["provenance"]["fingerprint"] == w.provenance.fingerprint
        assert d["value"] == pytest.approx(w.value, abs=1e-5)
    pair = {"prompt": prompt, "response_a": "A dark square.", "response_b": "A cat."}
    r = _post(service, "/v1/judge", {"judge": "judge", "pairs": [pair]})
    assert r.status_code == 200, r.text
    w = judge.compare([Pair.model_validate(pair)])[0]
    assert r.json()["data"][0]["prob_a_wins"] == pytest.approx(w.prob_a_wins, abs=1e-5)


def test_judge_refuses_rubric_paths_and_unknown_names(service: dict) -> None:
    items = [{"prompt": "Say hi", "response": "Hi!"}]
    for rubric in ("/etc/passwd", "../judges/rubrics/vqa.yaml", "nope"):
        r = _post(service, "/v1/judge", {"judge": "judge", "rubric": rubric, "items": items})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "rubric" and "helpfulness" in r.json()["error"]["limit"]
    r = _post(service, "/v1/judge", {"judge": "judge", "items": items, "pairs": [{"prompt": "p", "response_a": "a", "response_b": "b"}]})
    assert r.status_code == 422 and "exactly one" in r.json()["error"]["message"]


def test_models_health_ready_openapi(service: dict) -> None:
    h = service["headers"]
    assert httpx.get(service["url"] + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(service["url"] + "/readyz", headers=h)
    assert ready.status_code == 200 and ready.json()["models"] == ["tiny"]
    cards = {c["id"]: c for c in httpx.get(service["url"] + "/v1/models", headers=h).json()["data"]}
    assert cards["tiny"]["kind"] == "reward_model" and cards["judge"]["kind"] == "judge"
    spec = httpx.get(service["url"] + "/openapi.json", headers=h).json()
    assert {"/v1/score", "/v1/compare", "/v1/rank", "/v1/judge", "/v1/models", "/healthz", "/metrics"} <= set(spec["paths"])


@pytest.mark.parametrize("method,path", [("post", "/v1/score"), ("post", "/v1/compare"), ("post", "/v1/rank"),
                                         ("post", "/v1/judge"), ("get", "/v1/models"), ("get", "/readyz"),
                                         ("get", "/openapi.json"), ("get", "/docs")])
def test_every_route_but_healthz_needs_the_token(service: dict, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": service["token"]}):
        r = httpx.request(method, service["url"] + path, json={}, headers=headers, timeout=30)
        assert r.status_code == 401, (path, headers, r.status_code)
        assert r.json()["error"]["kind"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        assert service["token"] not in r.text


def test_metrics_protected_only_when_configured(service: dict) -> None:
    assert httpx.get(service["url"] + "/metrics").status_code == 200
    assert httpx.get(service["url"] + "/limited/healthz").status_code == 200  # open under a route prefix too
    limited = service["url"] + "/limited/metrics"
    assert httpx.get(limited).status_code == 401
    assert httpx.get(limited, headers=service["headers"]).status_code == 200


def test_validation_errors_name_the_item_and_the_limit(service: dict) -> None:
    good = _samples(1)[0]
    bad = {"prompt": _img_prompt("file:///etc/passwd"), "response": "x"}
    # An item's media problem is that item's invalid result (200); with on_item_error=fail, a 422.
    r = _post(service, "/v1/score", {"model": "tiny", "items": [good, bad]})
    assert r.status_code == 200, r.text
    item = r.json()["data"][1]
    assert item["field"] == "items[1].prompt[0].content[0].image_url" and item["error_kind"] == "media_forbidden"
    assert r.json()["data"][0]["value"] is not None
    r = _post(service, "/v1/score", {"model": "tiny", "items": [good, bad], "on_item_error": "fail"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "items[1].prompt[0].content[0].image_url" and err["kind"] == "media_forbidden"
    outside = {"prompt": _img_prompt("/etc/hostname"), "response": "x"}
    r = _post(service, "/v1/compare", {"model": "tiny", "on_item_error": "fail",
                                       "pairs": [{"prompt": outside["prompt"], "response_a": "a", "response_b": "b"}]})
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("pairs[0].prompt[0]")
    assert r.json()["error"]["limit"] == [str(service["media_root"])]
    r = _post(service, "/v1/score", {"model": "tiny", "items": [{"prompt": "p", "response": {"role": "user", "content": "x"}}]})
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("items[0]")
    r = _post(service, "/v1/score", {"model": "tiny", "items": [good] * 65})
    assert r.status_code == 422 and r.json()["error"]["limit"] == 64 and r.json()["error"]["field"] == "items"
    r = _post(service, "/v1/score", {"model": "nope", "items": [good]})
    assert r.status_code == 404 and r.json()["error"]["limit"] == ["tiny"]
    r = httpx.post(service["url"] + "/v1/score", content=b"{not json", headers={**service["headers"], "content-type": "application/json"})
    assert r.status_code == 422
    # and the service keeps serving
    assert _post(service, "/v1/score", {"model": "tiny", "items": [good]}).status_code == 200


def test_body_limit_413(service: dict) -> None:
    big = {"model": "tiny", "items": [{"prompt": "x" * (5 * 1024 * 1024), "response": "y"}]}
    r = _post(service, "/v1/score", big)
    assert r.status_code == 413 and r.json()["error"]["limit"] == 4 * 1024 * 1024


def test_over_long_input_is_an_invalid_item(service: dict) -> None:
    body = {"model": "tiny", "items": [{"prompt": "word " * 5000, "response": "y"}]}
    r = _post(service, "/v1/score", body)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert item["error_kind"] == "input_too_long" and item["limit"] == 4096 and item["value"] is None
    r = _post(service, "/v1/score", {**body, "on_item_error": "fail"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["kind"] == "input_too_long" and r.json()["error"]["limit"] == 4096


def test_request_id_is_echoed(service: dict) -> None:
    r = _post(service, "/v1/score", {"model": "tiny", "items": [{"prompt": "p", "response": "r"}]}, headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(_post(service, "/v1/score", {"model": "nope", "items": [{"prompt": "p", "response": "r"}]}).headers["x-request-id"]) >= 16


def test_burst_over_admission_gets_fast_503_and_accepted_requests_finish(service: dict) -> None:
    items = [{"prompt": "word " * 300, "response": f"answer {i}"} for i in range(16)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=service["headers"], timeout=300) as c:
            return await asyncio.gather(*(c.post(service["url"] + "/v1/score", json={"model": "tiny", "items": items}) for _ in range(30)))

    rs = asyncio.run(burst())
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 10 and codes.count(200) >= 1, codes
    for r in rs:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2" and r.json()["error"]["kind"] == "overloaded"
            assert r.elapsed.total_seconds() < 5
        else:
            assert len(r.json()["data"]) == 16
    # recovered
    assert _post(service, "/v1/score", {"model": "tiny", "items": items[:1]}).status_code == 200


def test_rate_limit_429_per_token(service: dict) -> None:
    url = service["url"] + "/limited/v1/score"
    body = {"model": "tiny-limited", "items": [{"prompt": "p", "response": "r"}]}
    codes = [httpx.post(url, json=body, headers=service["headers"], timeout=120) for _ in range(4)]
    assert [c.status_code for c in codes[:2]] == [200, 200]
    assert codes[2].status_code == 429 and int(codes[2].headers["retry-after"]) >= 1
    assert codes[2].json()["error"]["kind"] == "rate_limited"


def test_metrics_parse_and_counters_move(service: dict) -> None:
    def scrape() -> dict[tuple, float]:
        out = {}
        for fam in text_string_to_metric_families(httpx.get(service["url"] + "/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    before = scrape()
    assert _post(service, "/v1/score", {"model": "tiny", "items": _samples(3)}).status_code == 200
    after = scrape()
    key = ("mmrm_requests_total", (("code", "200"), ("model", "tiny"), ("route", "/v1/score")))
    assert after[key] == before.get(key, 0) + 1
    items_key = ("mmrm_items_total", (("model", "tiny"), ("outcome", "ok"), ("route", "/v1/score")))
    assert after[items_key] == before.get(items_key, 0) + 4  # 3 image samples + 1 text-only
    assert after[("mmrm_score_count", (("model", "tiny"), ("route", "/v1/score")))] >= 3
    assert after[("mmrm_batch_size_count", (("model", "tiny"),))] > before.get(("mmrm_batch_size_count", (("model", "tiny"),)), 0)


# Compatibility routes, with the payloads the RL stacks send (shapes from their sources; see
# mmrm/serve/compat/*.py for the commits matched).

CHATML_PROMPT = "<|im_start|>user\nWhich digit is in the image?<|im_end|>\n<|im_start|>assistant\n"


def test_openrlhf_get_reward_exact_payload(service: dict, inproc) -> None:
    """OpenRLHF@3c3be62 ``SingleTurnAgentExecutor._fetch_rewards_via_http`` body: query/prompts/labels."""
    from mmrm.rm.types import Sample

    query = CHATML_PROMPT + "The digit is 3.<|im_end|>"
    r = _post(service, "/get_reward", {"query": [query], "prompts": [CHATML_PROMPT], "labels": ["3"]})
    assert r.status_code == 200, r.text
    body = r.json()
    want = inproc.rewards([Sample(prompt="Which digit is in the image?", response="The digit is 3.")])[0]
    assert body["rewards"][0] == pytest.approx(want, abs=1e-5)
    assert body["scores"][0] == pytest.approx(1 / (1 + math.exp(-want)), abs=1e-6)
    assert isinstance(body["extra_logs"], dict)
    # mmrm's image extension: images beside query, one list per query
    uri = png_data_uri(np.full((56, 56, 3), 90, dtype=np.uint8))
    prompt_img = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which digit is in the image?<|im_end|>\n<|im_start|>assistant\n"
    r = _post(service, "/get_reward", {"query": [prompt_img + "The digit is 3.<|im_end|>"], "prompts": [prompt_img],
                                       "labels": [None], "images": [[uri]]})
    assert r.status_code == 200, r.text
    want_img = inproc.rewards([Sample(prompt=_img_prompt(uri), response="The digit is 3.")])[0]
    assert r.json()["rewards"][0] == pytest.approx(want_img, abs=1e-5)
    assert abs(want_img - want) > 1e-4  # the image really changed the score
    # an empty shard (several reward URLs) answers empty lists
    r = _post(service, "/get_reward", {"query": [], "prompts": [], "labels": []})
    assert r.status_code == 200 and r.json()["rewards"] == []
    # a prompt that is not a prefix of its query is a 422 naming the item
    r = _post(service, "/get_reward", {"query": [query], "prompts": ["<|im_start|>user\nsomething else"], "labels": [None]})
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("query[0]")


def test_vllm_classify_as_verl_sends_it(service: dict, inproc) -> None:
    """verl@b178a3c reward loop: ``{model, input: rendered conversation, activation: False}``, reads probs[-1]."""
    from mmrm.rm.types import Sample

    rendered = CHATML_PROMPT + "The digit is 5.<|im_end|>"
    r = _post(service, "/classify", {"model": "tiny", "input": rendered, "activation": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["id"].startswith("classify-") and body["model"] == "tiny"
    want = inproc.rewards([Sample(prompt="Which digit is in the image?", response="The digit is 5.")])[0]
    assert body["data"][0]["probs"][-1] == pytest.approx(want, abs=1e-5) and body["data"][0]["num_classes"] == 1
    # the chat form may carry images (mmrm's extension of what verl sends)
    uri = png_data_uri(np.full((56, 56, 3), 10, dtype=np.uint8))
    msgs = _img_prompt(uri) + [{"role": "assistant", "content": "The digit is 5."}]
    r = _post(service, "/classify", {"model": "tiny", "messages": msgs, "use_activation": True})
    assert r.status_code == 200, r.text
    want_img = inproc.rewards([Sample(prompt=_img_prompt(uri), response="The digit is 5.")])[0]
    assert r.json()["data"][0]["probs"][0] == pytest.approx(1 / (1 + math.exp(-want_img)), abs=1e-6)
    r = _post(service, "/classify", {"model": "tiny", "input": 5})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input"
