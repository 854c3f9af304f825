"""Model-family specifics live in mmrm.rm.families; the generic encoder asks for them.

The Qwen media token ids are read from the tokenizer here (``convert_tokens_to_ids``), not from the
code under test; a non-Qwen tokenizer is built locally with the ``tokenizers`` library.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrm.rm.encode import Encoder
from mmrm.rm.errors import InputTooLong, UnsupportedInput
from mmrm.rm.families import GENERIC, QWEN, family_for
from mmrm.rm.types import Message

QWEN_MEDIA = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processors(tiny_qwen2: Path, tiny_qwen2_vl: Path, tiny_qwen2_5_vl: Path) -> dict:
    import transformers as tf

    return {
        "qwen2": tf.AutoTokenizer.from_pretrained(tiny_qwen2),
        "qwen2_vl": tf.AutoProcessor.from_pretrained(tiny_qwen2_vl),
        "qwen2_5_vl": tf.AutoProcessor.from_pretrained(tiny_qwen2_5_vl),
    }


@pytest.mark.parametrize("arch", ["qwen2", "qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("given_model_type", [False, True])
def test_qwen_models_get_the_qwen_media_token_ids(processors: dict, arch: str, given_model_type: bool) -> None:
    proc = processors[arch]
    tok = getattr(proc, "tokenizer", proc)
    want = {tok.convert_tokens_to_ids(t) for t in QWEN_MEDIA}
    assert len(want) == 4 and tok.unk_token_id not in want
    enc = Encoder(proc, model_type=arch if given_model_type else None)
    assert enc.family is QWEN
    assert enc._media_ids == want


def test_qwen_placeholders_typed_as_text_are_refused(processors: dict) -> None:
    enc = Encoder(processors["qwen2_vl"])
    for t in QWEN_MEDIA:
        with pytest.raises(UnsupportedInput) as ei:
            enc.check_text([Message(role="user", content=f"look {t} here")])
        assert ei.value.field == "messages[0].content"


def test_left_truncation_never_cuts_a_qwen_media_span(processors: dict) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (9, 99, 199)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    prompt = Message.model_validate({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "word " * 40}]})
    reply = Message(role="assistant", content="ok")
    full = Encoder(processors["qwen2_vl"]).encode([prompt, reply])
    enc = Encoder(processors["qwen2_vl"], max_length=full.length - 5, truncation="left")
    with pytest.raises(InputTooLong) as ei:
        enc.encode([prompt, reply], protected_suffix=2)
    assert "cut an image" in ei.value.message


def test_a_non_qwen_tokenizer_is_generic_and_uses_its_processors_declared_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<pad>", "<image>", "<|image_pad|>"]  # one Qwen token alone does not make a Qwen model
    tok.train_from_iterator(["look at this picture", "a cat on a mat"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", additional_special_tokens=specials[1:])
    fast.image_token = "<image>"  # as a LLaVA-style processor declares it
    assert family_for(fast.get_vocab()) is GENERIC
    enc = Encoder(fast)
    assert enc.family is GENERIC
    assert enc._media_ids == {fast.convert_tokens_to_ids("<image>")}
    with pytest.raises(UnsupportedInput):
        enc.check_text([Message(role="user", content="see <image> here")])
    enc.check_text([Message(role="user", content="see <|image_pad|> here")])  # not a media token of this model


def test_model_type_picks_the_family() -> None:
    assert family_for({}, "qwen2_5_vl") is QWEN
    assert family_for({t: i for i, t in enumerate(QWEN_MEDIA)}, "llava") is GENERIC
    assert family_for({t: i for i, t in enumerate(QWEN_MEDIA)}) is QWEN


def test_the_generic_encoder_names_no_family_token() -> None:
    text = (REPO / "rm" / "encode.py").read_text()
    assert not [t for t in QWEN_MEDIA if t in text]
