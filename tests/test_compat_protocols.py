"""Compatibility protocols: the payloads OpenRLHF and verl actually send, into Samples and back.

The request shapes are copied from the callers' source (see each module's docstring for the repo,
file and commit): OpenRLHF's ``SingleTurnAgentExecutor._fetch_rewards_via_http`` and verl's
``RewardLoopWorker.compute_score_disrm``. The rendered texts are what the named chat templates
produce (Qwen2.5 ChatML with its default system prompt, Qwen2.5-VL with an expanded image, Llama-3.1
with its date header, Qwen3 with thinking disabled).
"""

from __future__ import annotations

import doctest
import json
import math
import subprocess
import sys

import pytest

import mmrm.serve.compat as compat
from mmrm.rm.errors import BackendError, InputTooLong, InvalidInput, MediaError, UnsupportedInput
from mmrm.rm.types import ImagePart, Provenance, Sample, ScoreResult, TextPart, VideoPart
from mmrm.serve.compat import openrlhf, vllm_classify
from mmrm.serve.compat.openrlhf import RewardRequest, split_query
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
    with pytest.raises(InvalidInput) as ei:
        openrlhf.to_samples(RewardRequest.model_validate({"query": [QWEN_PROMPT + "4<|im_end|>", "plain text"]}))
    assert ei.value.field == "query[1]"


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
    with pytest.raises(error) as ei:
        openrlhf.to_samples(RewardRequest.model_validate(body))
    assert ei.value.field == field, ei.value


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


def test_openrlhf_failures_fail_the_request_input_errors_first():
    with pytest.raises(InvalidInput) as ei:
        openrlhf.to_response([ok(1.0), bad(BackendError("replica died")),
                              bad(MediaError("cannot decode image", field="prompt[0].content[0]"))])
    assert ei.value.field == "query[2].prompt[0].content[0]"
    assert "2 of 3 items failed" in ei.value.message
    with pytest.raises(BackendError) as ei2:
        openrlhf.to_response([ok(1.0), bad(BackendError("replica died"))])
    assert ei2.value.field == "query[1]"


def test_failed_results_that_lost_their_exception_keep_their_kind():
    # Results that crossed a process boundary as data carry only error_kind and the message.
    r = ScoreResult(value=None, invalid="too long", error_kind="input_too_long", provenance=PROV)
    with pytest.raises(InputTooLong) as ei:
        openrlhf.to_response([r])
    assert ei.value.field == "query[0]"
    nan = ScoreResult(value=float("nan"), provenance=PROV)
    with pytest.raises(BackendError, match="non-finite"):
        openrlhf.to_response([nan])


def test_openrlhf_fill_mode():
    body = openrlhf.to_response([ok(1.0), bad(InvalidInput("bad image", field="prompt"))], on_invalid="fill", fill_value=0.0)
    assert body["rewards"] == [1.0, 0.0]
    assert body["extra_logs"] == {"mmrm_invalid": [0.0, 1.0]}
    assert body["errors"] == [{"index": 1, "kind": "invalid_input", "message": "bad image", "field": "query[1].prompt"}]
    with pytest.raises(ValueError, match="fill_value"):
        openrlhf.to_response([ok(1.0)], on_invalid="fill")


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
    with pytest.raises(error) as ei:
        vllm_classify.to_samples(parse_request(body))
    assert ei.value.field == field, ei.value


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


def test_classify_failures_fail_the_request():
    req = parse_request({"model": "rm", "input": [QWEN_PROMPT + "4<|im_end|>", QWEN_PROMPT + "5<|im_end|>"]})
    with pytest.raises(BackendError) as ei:
        vllm_classify.to_response(req, [ok(1.0), bad(BackendError("oom"))], model="rm")
    assert ei.value.field == "input[1]"
    chat = parse_request({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    with pytest.raises(InvalidInput) as ei2:
        vllm_classify.to_response(chat, [bad(InvalidInput("too many pixels", field="prompt[0].content[0]"))], model="rm")
    assert ei2.value.field == "messages.prompt[0].content[0]"
    with pytest.raises(ValueError, match="expected 2 results"):
        vllm_classify.to_response(req, [ok(1.0)], model="rm")


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
