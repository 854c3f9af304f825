"""Per-item failure on every versioned scoring route, over real HTTP on a real Serve app.

A batch mixes good items with every kind of item failure the service knows: undecodable media,
media refused by policy, input over the model's max_length, a modality the model does not take,
media placeholder tokens typed as text, and text that is not valid Unicode (a lone UTF-16
surrogate). The request answers 200; each bad item is its own invalid result naming its field and
the limit; each good item scores exactly as it does alone. ``on_item_error: fail`` turns the first
failure into a 422 for the whole request.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest

from helpers import VllmErrorResponse, image_part, image_uri, text_part, wait_until

pytestmark = pytest.mark.slow

MAX_LEN = 200
GOOD_IMG = image_uri(56, 56, seed=1)
BROKEN_IMG = "data:image/png;base64," + "QUJD" * 40  # valid base64, not an image


def user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


GOOD_A = {"prompt": user(image_part(GOOD_IMG), text_part("Which digit?")), "response": "The digit is 6."}
GOOD_B = {"prompt": "Describe the weather.", "response": "Sunny and warm."}


def bad_items(media_root: Path) -> dict[str, tuple[dict, str, str, object]]:
    """name -> (item, expected error_kind, expected field suffix, expected limit or None)."""
    return {
        "broken_image": ({"prompt": user(image_part(BROKEN_IMG), text_part("What is it?")), "response": "A cat."},
                         "invalid_media", ".prompt[0].content[0].image_url", None),
        "refused_path": ({"prompt": user(image_part("/etc/hostname"), text_part("What is it?")), "response": "A cat."},
                         "media_forbidden", ".prompt[0].content[0].image_url", None),
        "too_long": ({"prompt": "word " * 400, "response": "ok"}, "input_too_long", "", MAX_LEN),
        "placeholder": ({"prompt": user(text_part("look <|image_pad|> here")), "response": "fine"},
                        "unsupported_input", ".prompt[0].content[0].text", None),
    }


@pytest.fixture(scope="module")
def app(service: dict, tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An auth-less app with a VL reward model and a text-only one, both with a short max_length."""
    from ray import serve

    from mmrm.rm.reward_model import RewardModel
    from mmrm.serve.app import build_app

    text_ckpt = RewardModel.from_backbone(tiny_qwen2, seed=5).save_pretrained(tmp_path_factory.mktemp("rm") / "text-rm")
    common = {"num_cpus": 0.5, "max_batch_size": 16, "batch_wait_timeout_s": 0.02, "max_length": MAX_LEN}
    args = {
        "models": [{"name": "vl", "checkpoint": str(service["checkpoint"]), **common},
                   {"name": "text", "checkpoint": str(text_ckpt), **common}],
        "judges": [{"name": "judge", "backend": {"type": "hf", "model": str(service["judge_model"]), "max_length": 2048},
                    "judge": {"min_label_mass": 0.0}, "num_cpus": 0.5}],
        "limits": {"media": {"allowed_roots": [str(service["media_root"])]}},
        "ingress_num_cpus": 0.25,
    }
    serve.run(build_app(args), name="itemfail", route_prefix="/itemfail", blocking=False)
    url = service["url"] + "/itemfail"
    with httpx.Client(base_url=url, timeout=120) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, timeout=120, interval=0.5,
                   ignore=(httpx.TransportError,), message=f"{url} never became ready")
    return {"url": url, "media_root": service["media_root"]}


def post(app: dict, path: str, body: dict | str, **headers: str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(app["url"] + path, content=content, headers={"content-type": "application/json", **headers},
                      timeout=120)


def score_alone(app: dict, model: str, item: dict) -> float:
    r = post(app, "/v1/score", {"model": model, "items": [item]})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["value"]


def errors_total(app: dict, route: str, kind: str) -> float:
    text = httpx.get(app["url"] + "/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("mmrm_errors_total{") and f'route="{route}"' in line and f'kind="{kind}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_score_mixed_batch_every_failure_kind(app: dict) -> None:
    bad = bad_items(app["media_root"])
    names = list(bad)
    items = [GOOD_A, *(bad[n][0] for n in names[:2]), GOOD_B, *(bad[n][0] for n in names[2:])]
    before = errors_total(app, "/v1/score", "invalid_media")
    r = post(app, "/v1/score", {"model": "vl", "items": items}, **{"X-Request-Id": "rl-step-7"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "score-rl-step-7"
    assert body["usage"] == {"items": len(items), "invalid": len(bad)}
    data = body["data"]
    assert [d["index"] for d in data] == list(range(len(items)))
    assert math.isclose(data[0]["value"], score_alone(app, "vl", GOOD_A), abs_tol=1e-5)
    assert math.isclose(data[3]["value"], score_alone(app, "vl", GOOD_B), abs_tol=1e-5)
    positions = {names[0]: 1, names[1]: 2, names[2]: 4, names[3]: 5}
    for name, (_, kind, suffix, limit) in bad.items():
        d = data[positions[name]]
        assert d["value"] is None and d["invalid"], (name, d)
        assert d["error_kind"] == kind, (name, d)
        assert d["field"].startswith(f"items[{positions[name]}]") and d["field"].endswith(suffix), (name, d["field"])
        if limit is not None:
            assert d["limit"] == limit, (name, d)
    assert errors_total(app, "/v1/score", "invalid_media") == before + 1


def test_lone_surrogate_and_wrong_modality_are_item_results(app: dict) -> None:
    # JSON's \ud800 escape decodes to a lone surrogate: valid JSON, not encodable text.
    raw = ('{"model": "text", "items": [{"prompt": "hi", "response": "ok"}, '
           '{"prompt": "bad \\ud800 text", "response": "ok"}, '
           '{"prompt": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "' + GOOD_IMG + '"}}]}],'
           ' "response": "ok"}]}')
    r = post(app, "/v1/score", raw)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert math.isclose(data[0]["value"], score_alone(app, "text", {"prompt": "hi", "response": "ok"}), abs_tol=1e-5)
    assert data[1]["error_kind"] == "invalid_input" and data[1]["field"] == "items[1].prompt[0].content", data[1]
    assert data[2]["error_kind"] == "unsupported_input" and data[2]["field"] == "items[2].prompt[0].content[0]", data[2]


def test_on_item_error_fail_is_a_422_naming_the_first_failure(app: dict) -> None:
    bad = bad_items(app["media_root"])
    r = post(app, "/v1/score", {"model": "vl", "items": [GOOD_A, bad["too_long"][0], bad["broken_image"][0]],
                                "on_item_error": "fail"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["kind"] == "input_too_long" and err["field"] == "items[1].messages" and err["limit"] == MAX_LEN


def test_compare_one_bad_side_fails_only_its_pair(app: dict) -> None:
    bad = bad_items(app["media_root"])["broken_image"][0]
    good_pair = {"prompt": GOOD_A["prompt"], "response_a": "The digit is 6.", "response_b": "The digit is 9."}
    bad_pair = {"prompt": bad["prompt"], "response_a": "A cat.", "response_b": "A dog."}
    bad_side = {"prompt": "Say hi.", "response_a": "hi", "response_b": [text_part("<|vision_start|> hi")]}
    r = post(app, "/v1/compare", {"model": "vl", "pairs": [bad_pair, good_pair, bad_side]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data[2]["error_kind"] == "unsupported_input" and data[2]["field"] == "pairs[2].response_b.content[0].text"
    assert data[0]["error_kind"] == "invalid_media"
    assert data[0]["field"] == "pairs[0].prompt[0].content[0].image_url"
    ra = score_alone(app, "vl", {"prompt": GOOD_A["prompt"], "response": "The digit is 6."})
    rb = score_alone(app, "vl", {"prompt": GOOD_A["prompt"], "response": "The digit is 9."})
    assert math.isclose(data[1]["value"], 1 / (1 + math.exp(-(ra - rb))), abs_tol=1e-5)


def test_rank_bad_response_is_invalid_and_normalization_uses_the_rest(app: dict) -> None:
    responses = ["The digit is 6.", "The digit is 9.", [text_part("see <|image_pad|>")], "The digit is 1."]
    r = post(app, "/v1/rank", {"model": "vl", "groups": [{"prompt": GOOD_A["prompt"], "responses": responses}]})
    assert r.status_code == 200, r.text
    g = r.json()["data"][0]
    assert g["results"][2]["error_kind"] == "unsupported_input"
    assert g["results"][2]["field"] == "groups[0].responses[2].response.content[0].text"
    raw = [score_alone(app, "vl", {"prompt": GOOD_A["prompt"], "response": responses[i]}) for i in (0, 1, 3)]
    got = [g["results"][i]["value"] for i in (0, 1, 3)]
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(got, raw))
    mean = sum(raw) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in raw) / 3)
    want = [(x - mean) / (std + 1e-6) for x in raw]
    assert g["normalized"][2] is None
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip([g["normalized"][i] for i in (0, 1, 3)], want))


def test_judge_bad_item_fails_alone(app: dict) -> None:
    bad = bad_items(app["media_root"])["broken_image"][0]
    good = {"prompt": "Say hello.", "response": "Hello!"}
    r = post(app, "/v1/judge", {"judge": "judge", "rubric": "helpfulness", "items": [good, bad]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["invalid"] == 1
    assert body["data"][1]["value"] is None and body["data"][1]["error_kind"] == "invalid_media"
    assert body["data"][1]["field"] == "items[1]"
    alone = post(app, "/v1/judge", {"judge": "judge", "rubric": "helpfulness", "items": [good]}).json()["data"][0]
    assert math.isclose(body["data"][0]["value"], alone["value"], abs_tol=1e-5)


def test_request_level_problems_stay_4xx(app: dict) -> None:
    r404 = post(app, "/v1/score", {"model": "nope", "items": [GOOD_B]})
    assert r404.status_code == 404
    r = post(app, "/v1/score", {"model": "vl", "items": []})
    assert r.status_code == 422 and r.json()["error"]["field"] == "items"
    # Every error body also reads as vLLM's ErrorResponse (type + code), for clients written for vLLM.
    for resp, status, typ in ((r404, 404, "NotFoundError"), (r, 422, "UnprocessableEntityError")):
        err = VllmErrorResponse.model_validate(resp.json()).error
        assert (err.code, err.type) == (status, typ)
