"""The one input type and the one result type: real chat payloads in, refusals out.

Payload shapes are taken from the public formats, not from our code:

* OpenAI Chat Completions request messages: ``content`` is a string or a list of content parts;
  a text part is ``{"type": "text", "text": ...}``; an image part is
  ``{"type": "image_url", "image_url": {"url": ..., "detail": "auto" | "low" | "high"}}`` where
  url is "either a URL of the image or the base64 encoded image data"
  (OpenAI API reference, ChatCompletionRequestMessageContentPartImage / ...ImageUrl; the same
  fields in the generated clients, e.g. docs.rs openai-client-base
  ChatCompletionRequestMessageContentPartImageImageUrl).
* vLLM's OpenAI-compatible server also takes the image URL as a bare string, with or without the
  part's type: ``{"image_url": "https://example.com/image.jpg"}``
  (vllm/entrypoints/chat_utils.py, CustomChatCompletionContentSimpleImageParam: "A simpler version
  of the param that only accepts a plain image_url").
* Video parts in the Qwen2-VL / Qwen2.5-VL message format (Qwen README, qwen-vl-utils; docs.vllm.ai
  multimodal inputs): ``{"type": "video", "video": [frame, frame, ...]}`` (a list of frames) or
  ``{"type": "video", "video": "path/or/url.mp4", "fps": 2.0}``.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mmrm.rm.types import (
    Group,
    ImagePart,
    Message,
    Pair,
    Provenance,
    Sample,
    ScoreResult,
    TextPart,
    VideoPart,
    as_response,
)

PNG_1x1 = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

# A full OpenAI-style chat request body (the shape of POST /v1/chat/completions).
OPENAI_REQUEST = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a careful grader."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": PNG_1x1}},
            ],
        },
        {"role": "assistant", "content": "A cat on a red chair."},
    ],
    "max_tokens": 300,
}


def _roundtrip(model):
    """model_dump -> model_validate and JSON -> model_validate_json must both give an equal object."""
    cls = type(model)
    assert cls.model_validate(model.model_dump()) == model
    assert cls.model_validate_json(model.model_dump_json()) == model
    assert cls.model_validate(json.loads(model.model_dump_json())) == model


# ------------------------------------------------------------------------------------------------
# Real payloads


def test_openai_request_messages_parse_and_roundtrip():
    msgs = [Message.model_validate(m) for m in OPENAI_REQUEST["messages"]]
    assert [m.role for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0].content == "You are a careful grader."
    user = msgs[1]
    assert isinstance(user.content, list) and len(user.content) == 3
    assert isinstance(user.content[0], TextPart) and user.content[0].text == "What is in this image?"
    img = user.content[1]
    assert isinstance(img, ImagePart)
    assert img.url == "https://example.com/cat.png"
    assert img.image_url.detail == "high"
    assert user.content[2].image_url.url == PNG_1x1 and user.content[2].image_url.detail is None
    assert user.text == "What is in this image?"
    assert len(user.media) == 2
    for m in msgs:
        _roundtrip(m)

    sample = Sample.from_messages(OPENAI_REQUEST["messages"])
    assert sample.prompt == msgs[:2]
    assert sample.response == msgs[2]
    assert sample.messages == msgs
    _roundtrip(sample)


@pytest.mark.parametrize("detail", ["auto", "low", "high"])
def test_image_url_detail_values(detail):
    part = ImagePart.model_validate({"type": "image_url", "image_url": {"url": "https://x.org/a.jpg", "detail": detail}})
    assert part.image_url.detail == detail
    _roundtrip(part)


def test_image_url_unknown_detail_refused():
    with pytest.raises(ValidationError):
        ImagePart.model_validate({"type": "image_url", "image_url": {"url": "https://x.org/a.jpg", "detail": "ultra"}})


def test_string_content_and_list_of_text_parts():
    a = Message.model_validate({"role": "user", "content": "hello"})
    b = Message.model_validate({"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]})
    assert a.text == b.text == "hello"
    assert a.parts == [TextPart(text="hello")]
    assert a.media == [] and b.media == []
    _roundtrip(a)
    _roundtrip(b)


def test_vllm_bare_string_image_url_with_type():
    m = Message.model_validate({"role": "user", "content": [{"type": "image_url", "image_url": PNG_1x1}]})
    part = m.content[0]
    assert isinstance(part, ImagePart)
    assert part.url == PNG_1x1
    # the bare form is normalized to the object form: it dumps as OpenAI's shape and round-trips
    assert m.model_dump()["content"][0]["image_url"] == {"url": PNG_1x1, "detail": None}
    _roundtrip(m)


def test_vllm_simple_image_param_without_type():
    # vLLM: {"image_url": "https://example.com/image.jpg"} with no "type" key.
    m = Message.model_validate(
        {"role": "user", "content": [{"image_url": "https://example.com/image.jpg"}, {"type": "text", "text": "?"}]}
    )
    assert isinstance(m.content[0], ImagePart)
    assert m.content[0].url == "https://example.com/image.jpg"
    _roundtrip(m)


def test_video_part_list_of_frames():
    frames = [PNG_1x1, "frames/f1.png", "https://example.com/f2.jpg"]
    m = Message.model_validate(
        {"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "What happens?"}]}
    )
    v = m.content[0]
    assert isinstance(v, VideoPart)
    assert v.video == frames and v.fps is None
    assert m.media == [v]
    _roundtrip(m)


def test_video_part_single_path_with_fps():
    m = Message.model_validate({"role": "user", "content": [{"type": "video", "video": "clips/a.mp4", "fps": 2.0}]})
    v = m.content[0]
    assert v.video == "clips/a.mp4" and v.fps == 2.0
    _roundtrip(m)


@pytest.mark.parametrize(
    "video",
    [[], "", None],
    ids=["no-frames", "empty-path", "null"],
)
def test_video_part_refuses_empty(video):
    with pytest.raises(ValidationError):
        VideoPart.model_validate({"type": "video", "video": video})


@pytest.mark.parametrize("fps", [0, -1.0, float("inf"), float("nan")])
def test_video_part_refuses_bad_fps(fps):
    with pytest.raises(ValidationError):
        VideoPart.model_validate({"type": "video", "video": ["a.png"], "fps": fps})


def test_image_url_refuses_empty_url():
    with pytest.raises(ValidationError):
        ImagePart.model_validate({"type": "image_url", "image_url": {"url": ""}})


# ------------------------------------------------------------------------------------------------
# Coercions


def test_sample_bare_string_prompt_is_one_user_message():
    s = Sample.model_validate({"prompt": "Which digit?", "response": "The digit is 3."})
    assert s.prompt == [Message(role="user", content="Which digit?")]
    assert s.response == Message(role="assistant", content="The digit is 3.")
    _roundtrip(s)


def test_sample_response_as_parts_and_as_message():
    parts = [{"type": "text", "text": "Edited:"}, {"type": "image_url", "image_url": {"url": PNG_1x1}}]
    s_parts = Sample(prompt="edit it", response=parts)
    s_msg = Sample(prompt="edit it", response={"role": "assistant", "content": parts})
    s_obj = Sample(prompt="edit it", response=Message(role="assistant", content=parts))
    assert s_parts == s_msg == s_obj
    assert s_parts.response.role == "assistant"
    assert isinstance(s_parts.response.content[1], ImagePart)
    # a single content part (no role) is a one-part response
    single = Sample(prompt="edit it", response={"type": "image_url", "image_url": {"url": PNG_1x1}})
    assert single.response.content == [ImagePart(image_url={"url": PNG_1x1})]
    _roundtrip(s_parts)


def test_as_response_forms():
    assert as_response("ok") == Message(role="assistant", content="ok")
    assert as_response([{"type": "text", "text": "ok"}]).content == [TextPart(text="ok")]
    with pytest.raises(TypeError):
        as_response(3)
    with pytest.raises(ValueError):
        as_response({"role": "user", "content": "ok"})


def test_pair_coercion_samples_and_swap():
    p = Pair.model_validate({"prompt": "q", "response_a": "A", "response_b": [{"type": "text", "text": "B"}]})
    a, b = p.samples()
    assert a.prompt == b.prompt == [Message(role="user", content="q")]
    assert a.response.text == "A" and b.response.text == "B"
    sw = p.swapped()
    assert sw.response_a == p.response_b and sw.response_b == p.response_a and sw.prompt == p.prompt
    _roundtrip(p)


def test_group_coercion_and_samples():
    g = Group.model_validate(
        {"prompt": [{"role": "user", "content": "q"}], "responses": ["r1", {"role": "assistant", "content": "r2"}, [{"type": "text", "text": "r3"}]]}
    )
    assert [r.text for r in g.responses] == ["r1", "r2", "r3"]
    assert all(r.role == "assistant" for r in g.responses)
    assert [s.response.text for s in g.samples()] == ["r1", "r2", "r3"]
    assert all(s.prompt == g.prompt for s in g.samples())
    _roundtrip(g)


# ------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
        {"type": "image", "image": PNG_1x1},
        {"text": "no type"},
    ],
    ids=["input_audio", "file", "video_url", "image", "untyped-text"],
)
def test_unknown_part_type_refused(part):
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "content": [part]})


def test_extra_fields_refused():
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "content": [{"type": "text", "text": "x", "bogus": 1}]})


@pytest.mark.parametrize("role", ["tool", "developer", "function", ""])
def test_unknown_role_refused(role):
    with pytest.raises(ValidationError):
        Message.model_validate({"role": role, "content": "x"})


def test_prompt_ending_with_assistant_refused():
    prompt = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ValidationError, match="assistant"):
        Sample(prompt=prompt, response="b")
    with pytest.raises(ValidationError):
        Pair(prompt=prompt, response_a="x", response_b="y")
    with pytest.raises(ValidationError):
        Group(prompt=prompt, responses=["x"])


def test_empty_prompt_refused():
    with pytest.raises(ValidationError):
        Sample(prompt=[], response="b")


def test_empty_group_refused():
    with pytest.raises(ValidationError):
        Group(prompt="q", responses=[])


@pytest.mark.parametrize("role", ["user", "system"])
def test_response_with_wrong_role_refused(role):
    with pytest.raises(ValidationError, match="assistant"):
        Sample(prompt="q", response={"role": role, "content": "b"})
    with pytest.raises(ValidationError):
        Pair(prompt="q", response_a={"role": role, "content": "b"}, response_b="c")
    with pytest.raises(ValidationError):
        Group(prompt="q", responses=["a", {"role": role, "content": "b"}])


@pytest.mark.parametrize("bad", [42, None, 1.5, True])
def test_response_of_wrong_type_is_a_validation_error(bad):
    # A service maps ValidationError to 422; a bare TypeError would become a 500.
    with pytest.raises(ValidationError):
        Sample.model_validate({"prompt": "q", "response": bad})
    with pytest.raises(ValidationError):
        Group.model_validate({"prompt": "q", "responses": [bad]})


def test_from_messages_requires_final_assistant():
    with pytest.raises(ValueError):
        Sample.from_messages([{"role": "user", "content": "q"}])
    with pytest.raises(ValueError):
        Sample.from_messages([{"role": "user", "content": "q"}, {"role": "user", "content": "r"}])


def _prov() -> Provenance:
    return Provenance(scorer="rm", kind="reward_model", fingerprint="abc", mmrm_version="0.1.0", engine="hf", dtype="float32")


def test_score_result_exactly_one_of_value_and_invalid():
    ok = ScoreResult(value=0.5, provenance=_prov())
    assert ok.ok and ok.value == 0.5
    bad = ScoreResult(value=None, invalid="image too large", error_kind="limit_exceeded", provenance=_prov())
    assert not bad.ok
    with pytest.raises(ValidationError):
        ScoreResult(value=0.5, invalid="both", provenance=_prov())
    with pytest.raises(ValidationError):
        ScoreResult(value=None, provenance=_prov())
    _roundtrip(ok)
    _roundtrip(bad)


def test_provenance_kind_is_closed():
    with pytest.raises(ValidationError):
        Provenance(scorer="x", kind="oracle", fingerprint="f", mmrm_version="0", engine="hf")


def test_types_are_frozen():
    m = Message(role="user", content="x")
    with pytest.raises(ValidationError):
        m.role = "assistant"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# Property: any valid message round-trips unchanged

_source = st.text(min_size=1, max_size=40)
_text_part = st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=40))
_image_part = st.one_of(
    st.builds(
        lambda u, d: {"type": "image_url", "image_url": {"url": u, **({"detail": d} if d else {})}},
        _source,
        st.sampled_from([None, "auto", "low", "high"]),
    ),
    st.builds(lambda u: {"type": "image_url", "image_url": u}, _source),
)
_fps = st.one_of(st.none(), st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False))
_video_part = st.builds(
    lambda v, fps: {"type": "video", "video": v, **({"fps": fps} if fps is not None else {})},
    st.one_of(_source, st.lists(st.text(max_size=20), min_size=1, max_size=4)),
    _fps,
)
_content = st.one_of(st.text(max_size=60), st.lists(st.one_of(_text_part, _image_part, _video_part), max_size=5))
_message = st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["system", "user", "assistant"]), _content)


@settings(max_examples=200, deadline=None)
@given(_message)
def test_any_valid_message_roundtrips(raw):
    m = Message.model_validate(raw)
    assert Message.model_validate(m.model_dump()) == m
    assert Message.model_validate_json(m.model_dump_json()) == m
    # and the content is what was sent: same texts, same sources, in order
    if isinstance(raw["content"], str):
        assert m.content == raw["content"]
    else:
        assert len(m.content) == len(raw["content"])
        for part, src in zip(m.content, raw["content"]):
            assert part.type == src["type"]
            if src["type"] == "text":
                assert part.text == src["text"]
            elif src["type"] == "image_url":
                url = src["image_url"] if isinstance(src["image_url"], str) else src["image_url"]["url"]
                assert part.url == url
            else:
                assert part.video == src["video"]
                if "fps" in src:
                    assert math.isclose(part.fps, src["fps"], rel_tol=0, abs_tol=0)
