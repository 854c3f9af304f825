"""One options model (mmrm.rm.options) behind every way of loading a reward model, and the engine
interface a RewardModel scores through.

Every entry point that loads a reward model (``RewardModel.from_pretrained``, a serve config's model
entry, the eval runner's ``RewardModelSpec``, ``RewardFn.from_checkpoint``, ``mmrm score``) takes
the same fields, with the same defaults and the same validation; the expectations below are the
limits and rewards of a model loaded the plain way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from helpers import free_port, image_part, image_uri, text_part, video_part
from mmrm.rm.errors import ConfigError, InputTooLong, UnsupportedInput
from mmrm.rm.media import MediaPolicy
from mmrm.rm.options import ModelOptions, ScoringOptions, VLLMServer
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Sample

LONG = Sample(prompt="Count to twenty: " + " ".join(str(i) for i in range(1, 21)), response="Done counting.")
SHORT = [Sample(prompt="Say hi", response="Hi!"), Sample(prompt="2+2?", response="4")]


@pytest.fixture(scope="module")
def text_checkpoint(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return RewardModel.from_backbone(tiny_qwen2, seed=4, device="cpu").save_pretrained(
        tmp_path_factory.mktemp("opts") / "text-rm")


@pytest.fixture(scope="module")
def plain(text_checkpoint: Path) -> RewardModel:
    return RewardModel.from_pretrained(text_checkpoint, device="cpu")


def test_defaults_and_validation_name_the_field() -> None:
    o = ScoringOptions()
    assert (o.device, o.max_length, o.truncation, o.dtype, o.packing) == ("auto", None, None, "float32", "auto")
    assert all(f.description for f in ScoringOptions.model_fields.values())  # every knob documents itself
    with pytest.raises(ValidationError) as e:
        ScoringOptions(pack_sequences=False)  # the old keyword: refused, not ignored
    assert "pack_sequences" in str(e.value)
    with pytest.raises(ValidationError) as e:
        ScoringOptions(engine="vllm")
    assert "vllm" in str(e.value)
    with pytest.raises(ValidationError) as e:
        ScoringOptions(max_batch_size=0)
    assert "max_batch_size" in str(e.value)


def test_options_and_overrides_set_the_limits(text_checkpoint: Path, plain: RewardModel) -> None:
    n = plain.encode(LONG).length
    assert plain.config.max_length == 4096 and plain.options.max_length is None  # the checkpoint's
    by_options = RewardModel.from_pretrained(text_checkpoint, options=ScoringOptions(device="cpu", max_length=n - 1))
    with pytest.raises(InputTooLong) as e:
        by_options.encode(LONG)
    assert e.value.limit == n - 1
    # a keyword override wins over the options it is given with; the caller's options stay as given
    opts = ScoringOptions(device="cpu", max_length=n - 1)
    roomy = RewardModel.from_pretrained(text_checkpoint, options=opts, max_length=n)
    assert roomy.encode(LONG).length == n and opts.max_length == n - 1
    assert roomy.rewards(SHORT) == pytest.approx(plain.rewards(SHORT), abs=1e-6)
    with pytest.raises(ConfigError) as e:
        RewardModel.from_pretrained(text_checkpoint, device="cpu", max_lenght=10)  # misspelt: an error, never ignored
    assert "max_lenght" in str(e.value)


def test_live_knobs_are_the_models_own(text_checkpoint: Path) -> None:
    opts = ScoringOptions(device="cpu", packing="off")
    rm = RewardModel.from_pretrained(text_checkpoint, options=opts)
    rm.options.max_batch_size = 1
    before = rm.forward_calls
    rm.rewards(SHORT * 2)
    assert rm.forward_calls - before == 4  # one sample per forward, from the next call on
    assert opts.max_batch_size == 32  # the caller's object never changes under it


def test_serve_model_entry_embeds_the_options(text_checkpoint: Path) -> None:
    from mmrm.serve.config import ModelConfig

    entry = {"name": "m", "checkpoint": str(text_checkpoint), "device": "cpu", "max_length": 99, "packing": "off",
             "vision_cache_bytes": 0, "head_dtype": "float32"}
    mc = ModelConfig.model_validate(entry)
    policy = MediaPolicy(max_frames=3)
    opts = mc.scoring_options(policy)
    assert opts.media_policy == policy
    assert opts.model_options() == ModelOptions.model_validate({k: v for k, v in entry.items() if k not in ("name", "checkpoint")})
    assert set(ModelOptions.model_fields) <= set(ModelConfig.model_fields)  # every option, none re-listed apart
    with pytest.raises(ValidationError) as e:
        ModelConfig.model_validate({**entry, "pack_sequences": True})
    assert "pack_sequences" in str(e.value)
    with pytest.raises(ValidationError) as e:
        ModelConfig.model_validate({**entry, "engine": "vllm",
                                    "vllm": {"base_url": "http://127.0.0.1:1/v1", "served_model": "m", "api_key": "s3cret"}})
    assert "api_key_env" in str(e.value)
    vl = ModelConfig.model_validate({**entry, "engine": "vllm",
                                     "vllm": {"base_url": "http://127.0.0.1:1/v1", "served_model": "m", "api_key_env": "K"}})
    assert vl.scoring_options(policy, api_key="from-env").vllm == VLLMServer(
        base_url="http://127.0.0.1:1/v1", served_model="m", api_key="from-env")


def test_eval_spec_and_reward_fn_load_with_the_same_options(text_checkpoint: Path, plain: RewardModel) -> None:
    from mmrm.eval.scorers import RewardModelSpec, scorer_key
    from mmrm.rl.reward_fn import RewardFn

    spec = RewardModelSpec(checkpoint=text_checkpoint, device="cpu", max_length=plain.encode(LONG).length - 1)
    built = spec.build()
    assert isinstance(built, RewardModel) and built.config.max_length == spec.max_length
    assert spec.key() == scorer_key(built)  # the key without loading is the loaded model's
    assert built.rewards(SHORT) == pytest.approx(plain.rewards(SHORT), abs=1e-6)
    fn = RewardFn.from_checkpoint(text_checkpoint, options=ScoringOptions(device="cpu"), max_batch_size=1)
    assert fn.scorer.options.max_batch_size == 1  # type: ignore[attr-defined]
    assert fn([s.prompt for s in SHORT], [s.response for s in SHORT]) == pytest.approx(plain.rewards(SHORT), abs=1e-6)


def test_cli_score_builds_the_options_from_its_flags(text_checkpoint: Path, plain: RewardModel, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmrm.cli import app

    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps(s.model_dump(mode="json")) + "\n" for s in [*SHORT, LONG]))
    n = plain.encode(LONG).length
    r = CliRunner().invoke(app, ["score", str(text_checkpoint), "-i", str(f), "--device", "cpu", "--max-length", str(n - 1)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [x["value"] for x in rows[:2]] == pytest.approx(plain.rewards(SHORT), abs=1e-6)
    assert rows[2]["error_kind"] == "input_too_long" and rows[2]["limit"] == n - 1
    bad = CliRunner().invoke(app, ["score", str(text_checkpoint), "-i", str(f), "--truncation", "right"])
    assert bad.exit_code == 2 and "truncation" in bad.output


def test_vllm_engine_model_holds_no_backbone_and_fails_per_item(reward_checkpoint: Path) -> None:
    """The vllm engine without a server: the model loads (tokenizer, config, head), holds no
    backbone, refuses what the engine cannot score at encoding, and a server that is not there
    fails every item alone instead of raising."""
    from mmrm.rm.engines.base import Engine
    from mmrm.rm.engines.hf import HFEngine
    from mmrm.rm.engines.vllm import VLLMEngine

    url = f"http://127.0.0.1:{free_port()}/v1"
    vl = RewardModel.from_pretrained(reward_checkpoint, engine="vllm", vllm=VLLMServer(base_url=url, served_model="x", timeout_s=2))
    hf = RewardModel.from_pretrained(reward_checkpoint, device="cpu")
    try:
        assert isinstance(vl.engine, VLLMEngine) and isinstance(hf.engine, HFEngine)
        assert isinstance(vl.engine, Engine) and isinstance(hf.engine, Engine)
        assert vl.backbone is None and list(vl.parameters()) == list(vl.head.parameters())  # the head alone
        assert vl.provenance.engine == "vllm" and vl.provenance.dtype is None and hf.provenance.engine == "hf"
        sample = Sample(prompt=[{"role": "user", "content": [image_part(image_uri(56, 56, 1)), text_part("digit?")]}],
                        response="3")
        assert vl.encode(sample).input_ids.tolist() == hf.encode(sample).input_ids.tolist()  # one encoding
        vid = Sample(prompt=[{"role": "user", "content": [video_part([image_uri(56, 56, 2)] * 2), text_part("?")]}],
                     response="3")
        with pytest.raises(UnsupportedInput) as e:
            vl.encode(vid)
        assert e.value.field == "prompt[0].content[0]"
        res = vl.score([*SHORT, vid])
        assert [r.error_kind for r in res] == ["backend_error", "backend_error", "unsupported_input"]
        with pytest.raises(ConfigError) as e:
            vl.save_pretrained(Path("/nonexistent/never-written"))
        assert e.value.field == "engine"
    finally:
        vl.close()
