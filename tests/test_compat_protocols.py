"""Compatibility protocols: the payloads OpenRLHF and verl actually send, into Samples and back.

The request shapes are copied from the callers' source (see each module's docstring for the release,
file and function): OpenRLHF 0.11.2's ``SingleTurnAgentExecutor._fetch_rewards_via_http`` and verl
0.9.1's ``RewardLoopWorker.compute_score_disrm``; error bodies follow vLLM 0.32.0's ``ErrorResponse``.
Per-item failures: a query the route cannot convert is that item's error (the others still score);
``on_invalid`` decides whether a failed item fails the request or gets ``fill_value``.
(tests/test_rl_clients.py drives the same routes over HTTP with the frameworks' own client code.) The rendered texts are what the named chat templates
produce (Qwen2.5 ChatML with its default system prompt, Qwen2.5-VL with an expanded image, Llama-3.1
with its date header, Qwen3 with thinking disabled).
"""

from __future__ import annotations

import doctest
import json
import logging
import math
import subprocess
import sys

import pytest

import mmrm.serve.compat as compat
from mmrm.rm.errors import BackendError, InputTooLong, InvalidInput, MediaError, MmrmError, UnsupportedInput
from mmrm.rm.types import ImagePart, Provenance, Sample, ScoreResult, TextPart, VideoPart
from mmrm.serve.compat import openrlhf, vllm_classify
from mmrm.serve.compat.openrlhf import RewardRequest, split_query
from helpers import VllmErrorResponse
from mmrm.serve.compat.vllm_classify import (
    ClassificationChatRequest,
    ClassificationCompletionRequest,
    ClassificationResponse,
    parse_request,
)

PROV = Provenance(scorer="rm", kind="reward_model", fingerprint="f" * 16, mmrm_version="0.1.0", engine="hf")
IMG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

QWEN_SYS = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
QWEN_PROMPT = QWEN_SYS + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
QWEN_VL_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n")
LLAMA_PROMPT = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
QWEN3_PROMPT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def ok(v: float) -> ScoreResult:
    return ScoreResult(value=v, provenance=PROV)


def bad(err: Exception) -> ScoreResult:
    return ScoreResult.failed(err, PROV)


def roles_and_text(s: Sample) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in s.messages]


def first_error(items: list) -> MmrmError:
    """The first item a route could not convert (conversion errors are items, not exceptions)."""
    errors = [x for x in items if isinstance(x, MmrmError)]
    assert errors, f"every item converted: {items}"
    return errors[0]


# ==================================================================================================
# OpenRLHF: POST /get_reward {"query", "prompts", "labels"} -> {"rewards", "scores", "extra_logs"}


def openrlhf_body(queries: list[str], prompts: list[str], labels: list[object]) -> dict:
    # The exact keys of SingleTurnAgentExecutor._fetch_rewards_via_http's payload.
    return {"query": queries, "prompts": prompts, "labels": labels}


def test_openrlhf_qwen_chatml_text():
    body = openrlhf_body([QWEN_PROMPT + "2 + 2 = 4.<|im_end|>"], [QWEN_PROMPT], ["4"])
    req = RewardRequest.model_validate(json.loads(json.dumps(body)))
    (s,) = openrlhf.to_samples(req)
    assert roles_and_text(s) == [("system", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
                                 ("user", "What is 2+2?"), ("assistant", "2 + 2 = 4.")]
    assert req.labels == ["4"] and req.unknown_fields() == []


def test_openrlhf_qwen_vl_expanded_image_pads_and_images_extension():
    expanded = QWEN_VL_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * 64)
    body = openrlhf_body([expanded + "A red square.<|im_end|>"], [QWEN_VL_PROMPT], [None])
    body["images"] = [[IMG]]
    (s,) = openrlhf.to_samples(RewardRequest.model_validate(body))
    user = s.prompt[1]
    assert [type(p) for p in user.parts] == [ImagePart, TextPart]
    assert user.parts[0].url == IMG and user.parts[1].text == "Describe the image."
    assert s.response.text == "A red square."


def test_openrlhf_images_without_placeholders_go_first_in_the_user_turn():
    prompt = "<|im_start|>user\nWhat is in these?<|im_end|>\n<|im_start|>assistant\n"
    body = {"query": [prompt + "Two cats.<|im_end|>"], "prompts": [prompt], "images": [[IMG, IMG]]}
    (s,) = openrlhf.to_samples(RewardRequest.model_validate(body))
    assert [p.type for p in s.prompt[0].parts] == ["image_url", "image_url", "text"]


def test_openrlhf_single_image_string_and_null_entries():
    prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    body = {"query": [prompt + "a<|im_end|>", text + "b<|im_end|>"], "prompts": [prompt, text], "images": [IMG, None]}
    a, b = openrlhf.to_samples(RewardRequest.model_validate(body))
    assert a.prompt[0].media[0].url == IMG and b.prompt[0].content == "Hi"


def test_openrlhf_llama3_and_qwen3_thinking_prefill():
    a, b = openrlhf.to_samples(RewardRequest.model_validate(openrlhf_body(
        [LLAMA_PROMPT + "4<|eot_id|>", QWEN3_PROMPT + "4<|im_end|>"], [LLAMA_PROMPT, QWEN3_PROMPT], ["4", "4"])))
    assert roles_and_text(a)[1:] == [("user", "What is 2+2?"), ("assistant", "4")]
    assert a.prompt[0].text.startswith("Cutting Knowledge Date")
    # The text the generation prompt pre-filled belongs to the response, as rendered.
    assert b.response.text == "<think>\n\n</think>\n\n4"


def test_openrlhf_raw_prompt_without_template():
    # OpenRLHF without --apply_chat_template: an input_template such as "User: {}\nAssistant: ".
    prompt = "User: What is 2+2?\nAssistant: "
    (s,) = openrlhf.to_samples(RewardRequest.model_validate(openrlhf_body([prompt + "4</s>"], [prompt], [""])))
    assert roles_and_text(s) == [("user", prompt), ("assistant", "4")]


def test_openrlhf_truncated_response_without_eos():
    (s,) = openrlhf.to_samples(RewardRequest.model_validate(openrlhf_body([QWEN_PROMPT + "2 + 2 ="], [QWEN_PROMPT], [None])))
    assert s.response.text == "2 + 2 ="


def test_openrlhf_without_prompts_reads_the_query():
    body = {"query": [QWEN_PROMPT + "4<|im_end|>\n"]}  # serve_rm.py's server reads only "query"
    (s,) = openrlhf.to_samples(RewardRequest.model_validate(body))
    assert roles_and_text(s)[-2:] == [("user", "What is 2+2?"), ("assistant", "4")]
    good, bad = openrlhf.to_samples(RewardRequest.model_validate({"query": [QWEN_PROMPT + "4<|im_end|>", "plain text"]}))
    assert isinstance(good, Sample)  # the readable query still converts
    assert isinstance(bad, InvalidInput) and bad.field == "query[1]"


def test_openrlhf_empty_shard():
    # With several --reward.remote_url servers and one query, the later shards are empty lists.
    req = RewardRequest.model_validate({"query": [], "prompts": [], "labels": []})
    assert openrlhf.to_samples(req) == []
    assert openrlhf.to_response([]) == {"rewards": [], "scores": [], "extra_logs": {}}


def test_split_query():
    assert split_query(QWEN_PROMPT + "4<|im_end|>", QWEN_PROMPT) == "4<|im_end|>"
    assert split_query("<image><image>Q: A", "<image>Q: ") == "A"
    with pytest.raises(InvalidInput) as ei:
        split_query(QWEN_PROMPT[40:] + "4", QWEN_PROMPT, field="query[2]")  # left-truncated prompt
    assert ei.value.field == "query[2]"


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"query": ["a", "b"], "prompts": ["a"]}, InvalidInput, "prompts"),
        ({"query": ["a"], "labels": ["x", "y"]}, InvalidInput, "labels"),
        ({"query": ["a"], "prompts": ["a"], "images": [None, None]}, InvalidInput, "images"),
        ({"query": [QWEN_PROMPT + "4", "Q: x"], "prompts": [QWEN_PROMPT, "Q: y"]}, InvalidInput, "query[1]"),
        ({"query": [QWEN_VL_PROMPT + "x"], "prompts": [QWEN_VL_PROMPT]}, InvalidInput, "images[0]"),
        ({"query": [QWEN_VL_PROMPT + "x"], "prompts": [QWEN_VL_PROMPT], "images": [[IMG, IMG]]}, InvalidInput, "images[0]"),
        ({"query": ["<|im_start|>tool\nx<|im_end|>\n<|im_start|>assistant\ny"],
          "prompts": ["<|im_start|>tool\nx<|im_end|>\n<|im_start|>assistant\n"]}, UnsupportedInput, "prompts[0]"),
        ({"query": ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\nmore"],
          "prompts": ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"]}, InvalidInput, "prompts[0]"),
    ],
)
def test_openrlhf_validation_errors_name_the_field(body, error, field):
    # Lists that are not parallel are the request's fault (raised); anything about one query is that
    # query's own error item.
    try:
        err = first_error(openrlhf.to_samples(RewardRequest.model_validate(body)))
    except MmrmError as e:
        err = e
        assert field in ("prompts", "labels", "images"), f"{field} should be an item error, not raised"
    assert type(err) is error and err.field == field, err


def test_openrlhf_schema_errors_and_unknown_fields():
    with pytest.raises(Exception) as ei:
        RewardRequest.model_validate({"prompts": ["x"]})
    assert "query" in str(ei.value)
    req = RewardRequest.model_validate({"query": [], "temperature": 1})
    assert req.unknown_fields() == ["temperature"]


def test_openrlhf_response_shape_and_semantics():
    body = openrlhf.to_response([ok(0.0), ok(2.0), ok(-1.5)])
    assert set(body) == {"rewards", "scores", "extra_logs"}
    assert body["rewards"] == [0.0, 2.0, -1.5]
    assert body["scores"][0] == 0.5 and all(0 < s < 1 for s in body["scores"])
    assert body["scores"][1] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert openrlhf.to_response([ok(2.0)], scores="reward")["scores"] == [2.0]
    json.dumps(body, allow_nan=False)


def test_openrlhf_response_is_what_openrlhf_can_tensorize():
    torch = pytest.importorskip("torch")
    body = openrlhf.to_response([ok(1.0), bad(BackendError("oom"))], on_invalid="fill", fill_value=-5.0)
    # samples_generator._process_response_into_experience: torch.tensor([reward]), torch.tensor([score]),
    # and torch.tensor([value]) for every extra_logs value.
    torch.tensor([body["rewards"]])
    torch.tensor([body["scores"]])
    for v in body["extra_logs"].values():
        torch.tensor([v])


def test_openrlhf_failures_fail_the_request_input_errors_first(caplog):
    # Results name their own field path (the scoring pipeline prefixes it with the route's item name).
    media = bad(MediaError("cannot decode image", field="query[2].prompt[0].content[0].image_url", limit="PNG/JPEG"))
    with caplog.at_level(logging.WARNING, logger="mmrm.serve.compat"), pytest.raises(InvalidInput) as ei:
        openrlhf.to_response([ok(1.0), bad(BackendError("replica died")), media], request_id="req-7")
    assert ei.value.field == "query[2].prompt[0].content[0].image_url" and ei.value.limit == "PNG/JPEG"
    assert "2 of 3 items failed" in ei.value.message
    assert media._error.message == "cannot decode image"  # the result's own error is left as it was
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("req-7" in m and "the request fails" in m for m in lines)
    assert "query[2].prompt[0].content[0].image_url" in lines[1] and "PNG/JPEG" in lines[1]
    with pytest.raises(BackendError) as ei2:
        openrlhf.to_response([ok(1.0), bad(BackendError("replica died"))])
    assert ei2.value.field == "query[1]"  # no field of its own: the item's name


def test_failed_results_that_lost_their_exception_keep_their_kind():
    # Results that crossed a process boundary as data carry only error_kind and the message.
    r = ScoreResult(value=None, invalid="too long", error_kind="input_too_long", provenance=PROV)
    with pytest.raises(InputTooLong) as ei:
        openrlhf.to_response([r])
    assert ei.value.field == "query[0]"
    nan = ScoreResult(value=float("nan"), provenance=PROV)
    with pytest.raises(BackendError, match="non-finite"):
        openrlhf.to_response([nan])
    # ... and their field path and limit, as the replica sent them
    wire = ScoreResult.model_validate(ScoreResult(value=None, invalid="too long", error_kind="input_too_long",
                                                  field="query[0]", limit=200, provenance=PROV).model_dump(mode="json"))
    with pytest.raises(InputTooLong) as ei2:
        openrlhf.to_response([wire])
    assert ei2.value.field == "query[0]" and ei2.value.limit == 200


def test_openrlhf_fill_mode(caplog):
    failed = bad(InputTooLong("sample is 900 tokens", field="query[1]", limit=200))
    with caplog.at_level(logging.WARNING, logger="mmrm.serve.compat"):
        body = openrlhf.to_response([ok(1.0), failed, ok(-2.0)], on_invalid="fill", fill_value=-3.0, request_id="r9")
    assert body["rewards"] == [1.0, -3.0, -2.0]
    assert body["scores"][1] == pytest.approx(1 / (1 + math.exp(3.0)))  # the fill value's score follows `scores`
    assert body["extra_logs"] == {"mmrm_invalid": [0.0, 1.0, 0.0]}
    assert body["errors"] == [{"index": 1, "kind": "input_too_long", "message": "sample is 900 tokens",
                               "field": "query[1]", "limit": 200}]
    (line,) = [r for r in caplog.records if r.name == "mmrm.serve.compat"]
    assert line.levelno == logging.WARNING
    assert all(x in line.getMessage() for x in ("r9", "/get_reward", "query[1]", "limit 200", "input_too_long", "-3.0"))
    json.dumps(body, allow_nan=False)
    with pytest.raises(ValueError, match="fill_value"):
        openrlhf.to_response([ok(1.0)], on_invalid="fill")


@pytest.mark.parametrize("module", [openrlhf, vllm_classify])
def test_start_up_warning_only_with_the_error_policy(module, caplog):
    with caplog.at_level(logging.WARNING, logger="mmrm.serve.compat"):
        msg = module.warn_if_error_policy("error")
        assert module.warn_if_error_policy("fill") is None
    assert msg and "training step" in msg and "on_invalid: fill" in msg
    assert [r.getMessage() for r in caplog.records] == [msg]


@pytest.mark.parametrize("route", ["openrlhf", "classify"])
def test_config_fill_needs_a_finite_fill_value(route):
    from pydantic import ValidationError

    from mmrm.serve.config import ServiceConfig

    base = {"models": [{"name": "rm", "checkpoint": "/models/rm"}]}
    cfg = ServiceConfig.model_validate({**base, "compat": {route: {"on_invalid": "fill", "fill_value": -1.0}}})
    assert getattr(cfg.compat, route).fill_value == -1.0
    for bad_opts in ({"on_invalid": "fill"}, {"on_invalid": "fill", "fill_value": float("nan")},
                     {"on_invalid": "fill", "fill_value": float("-inf")}, {"fill_value": 0.0}):
        with pytest.raises(ValidationError) as ei:
            ServiceConfig.model_validate({**base, "compat": {route: bad_opts}})
        assert f"compat.{route}" in str(ei.value) and "fill_value" in str(ei.value)


# ==================================================================================================
# vLLM /classify as verl's reward loop calls it


def verl_payload(model: str, rendered: str, *, legacy: bool = True) -> dict:
    # RewardLoopWorker.compute_score_disrm: {"model", "input", "activation": False} (later: "use_activation").
    return {"model": model, "input": rendered, ("activation" if legacy else "use_activation"): False}


def verl_read_score(output: dict) -> float:
    return output["data"][-1]["probs"][-1]  # what verl takes as the reward


def test_verl_chatml_payload_roundtrip():
    rendered = QWEN_PROMPT + "2 + 2 = 4.<|im_end|>\n"  # apply_chat_template(add_generation_prompt=False)
    req = parse_request(verl_payload("/models/Skywork-Reward-V2-Qwen3-0.6B", rendered))
    assert isinstance(req, ClassificationCompletionRequest) and req.apply_activation is False
    (s,) = vllm_classify.to_samples(req)
    assert roles_and_text(s)[1:] == [("user", "What is 2+2?"), ("assistant", "2 + 2 = 4.")]
    out = vllm_classify.to_response(req, [ok(-0.75)], model=req.model)
    assert verl_read_score(out) == -0.75
    assert out["model"] == "/models/Skywork-Reward-V2-Qwen3-0.6B"


def test_verl_llama3_without_bos_and_new_flag():
    rendered = LLAMA_PROMPT[len("<|begin_of_text|>"):] + "4<|eot_id|>"  # verl strips the BOS
    req = parse_request(verl_payload("rm", rendered, legacy=False))
    (s,) = vllm_classify.to_samples(req)
    assert roles_and_text(s)[-1] == ("assistant", "4") and s.prompt[0].role == "system"
    assert verl_read_score(vllm_classify.to_response(req, [ok(3.0)], model="rm")) == 3.0


def test_classify_envelope_matches_vllm():
    req = parse_request({"model": "rm", "input": [QWEN_PROMPT + "4<|im_end|>", QWEN_PROMPT + "5<|im_end|>"],
                         "request_id": "r1"})
    assert len(vllm_classify.to_samples(req)) == 2
    out = vllm_classify.to_response(req, [ok(0.0), ok(2.0)], model="rm", prompt_tokens=40)
    ClassificationResponse.model_validate(out)
    assert set(out) == {"id", "object", "created", "model", "data", "usage"}
    assert out["id"] == "classify-r1" and out["object"] == "list" and isinstance(out["created"], int)
    assert out["usage"] == {"prompt_tokens": 40, "total_tokens": 40, "completion_tokens": 0, "prompt_tokens_details": None}
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert all(set(d) == {"index", "label", "probs", "num_classes"} and d["num_classes"] == 1 for d in out["data"])
    # Activation on by default (vLLM's default): sigmoid for a one-label model.
    assert out["data"][0]["probs"] == [0.5] and out["data"][1]["probs"][0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert vllm_classify.to_response(req, [ok(0.0), ok(2.0)], model="rm", request_id="hdr")["id"] == "classify-hdr"
    json.dumps(out, allow_nan=False)


def test_classify_chat_messages_with_media():
    body = {
        "model": "rm",
        "use_activation": False,
        "messages": [
            {"role": "developer", "content": "Be strict."},
            {"role": "user", "content": [{"type": "text", "text": "Which is it?"},
                                         {"type": "image_url", "image_url": {"url": IMG, "detail": "low"}},
                                         {"type": "video_url", "video_url": {"url": "clips/a.mp4"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It is a red square."}], "name": "policy"},
        ],
    }
    req = parse_request(body)
    assert isinstance(req, ClassificationChatRequest)
    (s,) = vllm_classify.to_samples(req)
    assert s.prompt[0].role == "system"
    assert [type(p) for p in s.prompt[1].parts] == [TextPart, ImagePart, VideoPart]
    assert s.prompt[1].parts[2].video == "clips/a.mp4"
    assert s.response.text == "It is a red square."
    out = vllm_classify.to_response(req, [ok(1.25)], model="rm")
    assert out["data"] == [{"index": 0, "label": "reward", "probs": [1.25], "num_classes": 1}]


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"model": "rm", "input": [1, 2, 3]}, UnsupportedInput, "input"),
        ({"model": "rm", "input": [[1, 2], [3]]}, UnsupportedInput, "input"),
        ({"model": "rm", "input": []}, InvalidInput, "input"),
        ({"model": "rm", "input": [QWEN_PROMPT + "4<|im_end|>", "just text"]}, InvalidInput, "input[1]"),
        ({"model": "rm", "input": QWEN_PROMPT}, InvalidInput, "input"),  # rendered with a generation prompt only
        ({"model": "rm", "input": QWEN_VL_PROMPT + "x<|im_end|>"}, UnsupportedInput, "input"),
        ({"model": "rm", "messages": [{"role": "user", "content": "q"}]}, InvalidInput, "messages"),
        ({"model": "rm", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},
         UnsupportedInput, "messages[1].role"),
        ({"model": "rm", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
                                      {"role": "assistant", "content": "a"}]}, UnsupportedInput, "messages[0].content[0]"),
        ({"model": "rm", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
         InvalidInput, "messages[1].content"),
    ],
)
def test_classify_conversion_errors_name_the_field(body, error, field):
    # An input with no readable items (token ids, empty) is refused; anything about one conversation is
    # that item's own error (it then follows on_invalid like a scoring failure).
    try:
        err = first_error(vllm_classify.to_samples(parse_request(body)))
    except MmrmError as e:
        err = e
        assert body.get("input") in ([1, 2, 3], [[1, 2], [3]], []), f"{field} should be an item error, not raised"
    assert type(err) is error and err.field == field, err


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"model": "rm"}, InvalidInput, "input"),
        ({"model": "rm", "input": 5}, InvalidInput, "input"),
        ({"model": "rm", "input": "x", "normalize": True}, InvalidInput, "normalize"),
        ({"model": "rm", "input": "x", "truncate_prompt_tokens": -2}, InvalidInput, "truncate_prompt_tokens"),
        ({"model": "rm", "messages": []}, InvalidInput, "messages"),
        ({"messages": [{"role": "user", "content": "q"}], "add_generation_prompt": True},
         InvalidInput, "add_generation_prompt"),
        ({"messages": [{"role": "user", "content": "q"}], "chat_template": "{{x}}"}, UnsupportedInput, "chat_template"),
        ({"messages": [{"role": "user", "content": "q"}], "chat_template_kwargs": {"enable_thinking": False}},
         UnsupportedInput, "chat_template_kwargs"),
    ],
)
def test_classify_request_validation_names_the_field(body, error, field):
    with pytest.raises(error) as ei:
        parse_request(body)
    assert ei.value.field == field, ei.value


def test_classify_failures_fail_the_request_by_default():
    req = parse_request({"model": "rm", "input": [QWEN_PROMPT + "4<|im_end|>", QWEN_PROMPT + "5<|im_end|>"]})
    with pytest.raises(BackendError) as ei:
        vllm_classify.to_response(req, [ok(1.0), bad(BackendError("oom"))], model="rm")
    assert ei.value.field == "input[1]"
    chat = parse_request({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    with pytest.raises(InvalidInput) as ei2:
        vllm_classify.to_response(chat, [bad(InvalidInput("too many pixels", field="messages.prompt[0].content[0]",
                                                          limit=1024))], model="rm")
    assert ei2.value.field == "messages.prompt[0].content[0]" and ei2.value.limit == 1024
    with pytest.raises(ValueError, match="expected 2 results"):
        vllm_classify.to_response(req, [ok(1.0)], model="rm")


def test_classify_fill_mode_answers_a_number_verl_can_read(caplog):
    req = parse_request(verl_payload("rm", QWEN_PROMPT + "4<|im_end|>\n", legacy=False))
    too_long = bad(InputTooLong("sample is 900 tokens", field="input", limit=200))
    with caplog.at_level(logging.WARNING, logger="mmrm.serve.compat"):
        out = vllm_classify.to_response(req, [too_long], model="rm", on_invalid="fill", fill_value=-4.0, trace_id="t1")
    assert verl_read_score(out) == -4.0  # use_activation false: the fill value itself
    ClassificationResponse.model_validate(out)
    assert out["data"][0]["error"] == {"kind": "input_too_long", "message": "sample is 900 tokens", "field": "input",
                                       "limit": 200}
    assert any("t1" in r.getMessage() and "limit 200" in r.getMessage() for r in caplog.records)
    # with activation on, the fill value goes through the sigmoid like a reward; good items are unflagged
    many = parse_request({"model": "rm", "input": [QWEN_PROMPT + "4<|im_end|>", QWEN_PROMPT + "5<|im_end|>"]})
    out2 = vllm_classify.to_response(many, [ok(0.0), too_long], model="rm", on_invalid="fill", fill_value=-4.0)
    assert out2["data"][0] == {"index": 0, "label": "reward", "probs": [0.5], "num_classes": 1}
    assert out2["data"][1]["probs"] == [pytest.approx(1 / (1 + math.exp(4.0)))]
    with pytest.raises(ValueError, match="fill_value"):
        vllm_classify.to_response(many, [ok(0.0), too_long], model="rm", on_invalid="fill", fill_value=float("nan"))


@pytest.mark.parametrize(
    ("exc", "status", "type_"),
    [
        (InvalidInput("input must be a string", field="input"), 422, "UnprocessableEntityError"),
        (InputTooLong("too long", field="input[1]", limit=200), 422, "UnprocessableEntityError"),
        (BackendError("oom", field="input[0]"), 502, "Bad Gateway"),
        (MmrmError("no reward model is served", field="model"), 404, "NotFoundError"),
        (MmrmError("busy"), 503, "ServiceUnavailableError"),
        (MmrmError("slow"), 504, "Gateway Timeout"),
    ],
)
def test_classify_error_body_is_vllms_error_response(exc, status, type_):
    from mmrm.rm.protocol import ErrorResponse as MmrmErrorResponse

    body = vllm_classify.error_body(exc, status)
    v = VllmErrorResponse.model_validate(body)
    assert (v.error.type, v.error.code, v.error.param, v.error.message) == (type_, status, exc.field, exc.message)
    # mmrm's own reading of the same body still works (kind, field, limit)
    m = MmrmErrorResponse.model_validate(body)
    assert (m.error.kind, m.error.field, m.error.limit) == (exc.kind, exc.field, exc.limit)
    json.dumps(body, allow_nan=False)


def test_classify_unknown_fields_are_ignored_like_vllm():
    req = parse_request({"model": "rm", "input": "x", "encoding_format": "float"})
    assert req.unknown_fields() == ["encoding_format"] and req.apply_activation is True


# ==================================================================================================
# Shared pieces


def test_parse_rendered_chat_gemma_and_unknown_roles():
    rc = compat.parse_rendered_chat("<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n")
    assert rc is not None and rc.template == "gemma"
    assert [(t.role, t.content) for t in rc.turns] == [("user", "Hi"), ("assistant", "Hello")]
    with pytest.raises(UnsupportedInput):
        compat.parse_rendered_chat("<|start_header_id|>ipython<|end_header_id|>\n\nx<|eot_id|>")
    assert compat.parse_rendered_chat("<|im_start|>user\nq<|im_end|>garbage<|im_start|>assistant\na") is None


@pytest.mark.parametrize("module", [compat, openrlhf, vllm_classify])
def test_docstring_examples_run(module):
    res = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 0


def test_compat_modules_are_light():
    code = ("import mmrm.serve.compat.openrlhf, mmrm.serve.compat.vllm_classify, sys; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules and 'fastapi' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------
# vLLM 0.33.0's /classify models. vLLM 0.33.0 ships only as a CUDA wheel whose protocol modules import
# the engine (vllm.config, vllm.renderers, PoolingParams), so they cannot be imported light here;
# these are independent transcriptions of the released wheel
# (vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl, sha256 4b6bdec4ab269990bf70d45a3c1e94c3760a27064513760193b26d6f0da883aa):
# vllm/entrypoints/pooling/classify/protocol.py (ClassificationCompletionRequest = PoolingBasicRequestMixin +
# CompletionRequestMixin + ClassifyRequestMixin; ClassificationChatRequest = ... + ChatRequestMixin; both behind
# reject_removed_pooling_parameters; ClassificationData; ClassificationResponse), vllm/entrypoints/pooling/base/
# protocol.py (the mixins' fields and defaults), vllm/entrypoints/serve/engine/protocol.py (OpenAIBaseModel
# extra="allow", UsageInfo), vllm/tasks.py (check_removed_pooling_task).

from typing import Any, Literal  # noqa: E402

from pydantic import BaseModel, ConfigDict, Field  # noqa: E402


class _V033Base(BaseModel):
    model_config = ConfigDict(extra="allow")


class V033PoolingBasic(_V033Base):
    model: str | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    padding: Literal["max_length", "do_not_pad"] | None = None
    truncation_side: Literal["left", "right"] | None = None
    request_id: str = "generated"
    priority: int = 0
    mm_processor_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = None
    use_activation: bool | None = None  # ClassifyRequestMixin


class V033CompletionRequest(V033PoolingBasic):
    input: list[int] | list[list[int]] | str | list[str]
    add_special_tokens: bool = True


class V033ChatRequest(V033PoolingBasic):
    messages: list[dict[str, Any]]
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None


class V033Data(_V033Base):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class V033Usage(_V033Base):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class V033Response(_V033Base):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[V033Data]
    usage: V033Usage


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_classify_request_fields_cover_vllm_033():
    """Every field vLLM 0.33.0's classify requests define is a field of mmrm's (so none is silently
    an 'extra'), with the same defaults where mmrm acts on them."""
    assert _fields(V033CompletionRequest) <= _fields(ClassificationCompletionRequest)
    assert _fields(V033ChatRequest) <= _fields(ClassificationChatRequest)
    for ours, theirs in ((ClassificationCompletionRequest, V033CompletionRequest),
                         (ClassificationChatRequest, V033ChatRequest)):
        for name in ("add_special_tokens", "use_activation", "truncate_prompt_tokens"):
            assert ours.model_fields[name].default == theirs.model_fields[name].default, (ours.__name__, name)
    for name in ("add_generation_prompt", "continue_final_message", "chat_template"):
        assert ClassificationChatRequest.model_fields[name].default == V033ChatRequest.model_fields[name].default


def test_verl_request_and_mmrm_response_validate_as_vllm_033():
    """verl 0.9.1's request is a valid 0.33.0 completion request, and mmrm's answers (plain, and a
    filled item with its extra ``error`` record) are valid 0.33.0 responses that read the same."""
    verl_body = {"model": "/models/rm", "input": QWEN_PROMPT + "4<|im_end|>", "use_activation": False}
    V033CompletionRequest.model_validate(verl_body)
    req = parse_request(verl_body)
    out = vllm_classify.to_response(req, [ok(1.5)], model="rm", prompt_tokens=12)
    v = V033Response.model_validate(out)
    assert v.data[-1].probs[-1] == 1.5 and v.usage.prompt_tokens == 12 and v.id.startswith("classify-")
    filled = vllm_classify.to_response(parse_request({"model": "rm", "input": [QWEN_PROMPT + "4<|im_end|>"] * 2,
                                                      "use_activation": False}),
                                       [ok(0.5), bad(InvalidInput("x", field="input"))], model="rm",
                                       on_invalid="fill", fill_value=-2.0)
    fv = V033Response.model_validate(filled)
    assert [d.probs for d in fv.data] == [[0.5], [-2.0]] and "error" in (fv.data[1].model_extra or {})


@pytest.mark.parametrize("body, field", [({"input": "x", "normalize": True}, "normalize"),
                                          ({"input": "x", "task": "score"}, "task"),
                                          ({"messages": [{"role": "user", "content": "x"}], "task": "encode"}, "task")])
def test_classify_refuses_what_vllm_033_refuses(body, field):
    """vLLM 0.33.0's ``reject_removed_pooling_parameters``: ``normalize`` and the removed task names."""
    with pytest.raises(InvalidInput) as ei:
        parse_request({"model": "rm", **body})
    assert ei.value.field == field


def test_get_reward_placeholders_without_images_are_an_item_failure_that_names_the_limit(caplog):
    """What stock OpenRLHF 0.11.2 sends for a VLM rollout (placeholders, no ``images``): under
    ``on_invalid: fill`` the item gets the fill value and its flag, and the WARNING line and the
    error record name the limit (OpenRLHF's text-only client) and the way out (mmrm's executor)."""
    query = QWEN_VL_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * 4) + "A cat.<|im_end|>"
    req = RewardRequest.model_validate({"query": [QWEN_PROMPT + "4<|im_end|>", query],
                                        "prompts": [QWEN_PROMPT, QWEN_VL_PROMPT]})
    converted = openrlhf.to_samples(req)
    assert isinstance(converted[0], Sample) and isinstance(converted[1], InvalidInput)
    results = [ok(1.0), bad(converted[1])]
    with caplog.at_level(logging.WARNING):
        body = openrlhf.to_response(results, on_invalid="fill", fill_value=-1.0, request_id="r9")
    assert body["rewards"] == [1.0, -1.0] and body["extra_logs"]["mmrm_invalid"] == [0.0, 1.0]
    (err,) = body["errors"]
    assert (err["kind"], err["field"], err["limit"]) == ("invalid_input", "images[1]", 1)
    line = next(r.getMessage() for r in caplog.records if "r9" in r.getMessage())
    assert "OpenRLHF 0.11.2" in line and "agent_func_path" in line and "limit 1" in line
