"""Bradley-Terry training: loss, data loading, exact resume, Ray Train DDP, the digits smoke run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmrm.rm.media import MediaPolicy
from mmrm.rm.reward_model import RewardModel
from mmrm.train import TrainConfig, train
from mmrm.train.data import load_pairs
from mmrm.train.digits import build_digits_dataset
from mmrm.train.loss import bradley_terry_loss
from mmrm.train.trainer import epoch_order, train_loop


def test_bt_loss_matches_hand_computed_value() -> None:
    rc, rr = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 1.5, -1.0])
    margin = torch.tensor([0.5, 0.0, 0.25])
    # -log(sigmoid(x)) = log(1 + exp(-x)), by hand for x = 0.5, -1.0, -0.25
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0)) + math.log1p(math.exp(0.25))) / 3
    assert bradley_terry_loss(rc, rr, margin=margin).item() == pytest.approx(expected, abs=1e-6)
    # centering adds coef * mean((rc + rr)^2) = 0.1 * (9 + 4 + 4) / 3
    centered = bradley_terry_loss(rc, rr, margin=margin, center_coef=0.1).item()
    assert centered == pytest.approx(expected + 0.1 * 17 / 3, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2), abs=1e-7)


def test_bt_loss_gradient_pushes_chosen_up() -> None:
    rc = torch.tensor([0.0], requires_grad=True)
    rr = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(rc, rr).backward()
    assert rc.grad.item() == pytest.approx(-0.5) and rr.grad.item() == pytest.approx(0.5)


@pytest.fixture(scope="module")
def digits_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_digits_dataset(tmp_path_factory.mktemp("digits"), limit=160, seed=1)


def test_digits_dataset_text_carries_no_signal(tmp_path: Path) -> None:
    train_file, eval_file = build_digits_dataset(tmp_path, limit=300, seed=3)
    rows = [json.loads(l) for l in train_file.read_text().splitlines()]
    held = [json.loads(l) for l in eval_file.read_text().splitlines()]
    assert not {r["id"] for r in rows} & {r["id"] for r in held}, "held-out split must be by image"
    for r in rows:
        assert r["chosen"] != r["rejected"] and r["images"][0].endswith(".png")
    # Each wrong digit is uniform over the other nine, so "rejected" digits spread over all ten values.
    assert len({r["rejected"] for r in rows}) == 10


def test_load_pairs_jsonl_parquet_and_dataset_agree(tmp_path: Path, digits_small: tuple[Path, Path]) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    train_file, _ = digits_small
    rows = [json.loads(l) for l in train_file.read_text().splitlines()][:5]
    from_jsonl = load_pairs(train_file)[:5]
    # A Parquet copy beside the images gives the same pairs.
    pq.write_table(pa.Table.from_pylist(rows), train_file.parent / "copy.parquet")
    from_parquet = load_pairs(train_file.parent / "copy.parquet")
    assert [p.pair for p in from_parquet] == [p.pair for p in from_jsonl]
    # A datasets.Dataset has no folder: paths are taken as given.
    ds = datasets.Dataset.from_list([{**r, "images": [str(train_file.parent / r["images"][0])]} for r in rows])
    assert [p.pair for p in load_pairs(ds)] == [p.pair for p in from_jsonl]
    first = from_jsonl[0].pair
    assert first.prompt[0].content[0].type == "image_url"
    assert first.response_a.text == rows[0]["chosen"]


def test_load_pairs_names_the_bad_row(tmp_path: Path) -> None:
    from mmrm.rm.errors import InvalidInput

    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(InvalidInput) as e:
        load_pairs(f)
    assert e.value.field == "rows[1].rejected"


def _cfg(tiny: Path, data: tuple[Path, Path], out: Path, **kw) -> TrainConfig:
    base = dict(backbone=tiny, output_dir=out, train_data=data[0], eval_data=data[1], epochs=2, batch_size=8,
                lr=3e-4, max_length=256, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {f"head.{k}": v for k, v in load_file(str(path / "head.safetensors")).items()}
    for f in sorted(path.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    assert (epoch_order(1, 2, 50) == epoch_order(1, 2, 50)).all()
    assert not (epoch_order(1, 2, 50) == epoch_order(1, 3, 50)).all()


@pytest.mark.slow
def test_resume_is_exact(tiny_qwen2_vl: Path, digits_small: tuple[Path, Path], tmp_path: Path) -> None:
    """Stopped after 3 steps and resumed == uninterrupted, bit for bit (grad accumulation on)."""
    full = _cfg(tiny_qwen2_vl, digits_small, tmp_path / "full", grad_accum=2, batch_size=4)
    r_full = train(full)
    assert r_full.steps == r_full.total_steps > 3
    part = _cfg(tiny_qwen2_vl, digits_small, tmp_path / "part", grad_accum=2, batch_size=4, stop_after_steps=3)
    r_part = train(part)
    assert r_part.steps == 3 and r_part.checkpoint is None
    assert (tmp_path / "part" / "train_state" / "meta.json").exists()
    r_resumed = train(part.model_copy(update={"stop_after_steps": None}))
    assert r_resumed.steps == r_full.steps
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The same loss trajectory after the resume point, too.
    assert [h["loss"] for h in r_resumed.history] == [h["loss"] for h in r_full.history][3:]


@pytest.mark.slow
def test_lora_training_changes_only_adapters_and_head(tiny_qwen2_vl: Path, digits_small: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = _cfg(tiny_qwen2_vl, digits_small, tmp_path / "lora", tune="lora", epochs=1, stop_after_steps=None)
    rm, result = train_loop(cfg)
    trainable = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    # The merged checkpoint reloads and scores as the in-memory adapter model does.
    reloaded = RewardModel.from_pretrained(result.checkpoint, device="cpu", media_policy=rm.encoder.media.policy)
    pairs = [p.pair for p in load_pairs(digits_small[1])[:4]]
    rm.eval()
    assert reloaded.probabilities(pairs) == pytest.approx(rm.probabilities(pairs), abs=1e-5)


@pytest.mark.slow
def test_frozen_backbone_trains_head_only(tiny_qwen2_vl: Path, digits_small: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = _cfg(tiny_qwen2_vl, digits_small, tmp_path / "frozen", tune="frozen", epochs=1)
    rm, _ = train_loop(cfg)
    assert {n.split(".")[0] for n, p in rm.named_parameters() if p.requires_grad} == {"head"}
    before = RewardModel.from_backbone(tiny_qwen2_vl, seed=5)
    for (n, p), (_, q) in zip(rm.backbone.named_parameters(), before.backbone.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.slow
def test_ray_train_two_workers_matches_one(ray_cluster, tiny_qwen2_vl: Path, digits_small: tuple[Path, Path], tmp_path: Path) -> None:
    """2 DDP workers on Ray Train follow the single-worker trajectory.

    Each worker takes half of every batch and DDP averages the gradients, so each update equals the
    single worker's up to float summation order. Adam divides each coordinate by its running RMS,
    which turns rounding noise in near-zero gradients into small steps, so the runs drift apart
    slightly (measured here: 1.5e-3 on rewards after 16 steps, while training moved them by 0.59).
    We allow drift below 1% of how far training moved the rewards; workers that saw the wrong
    shard follow a different trajectory and land far outside that.
    """
    one = _cfg(tiny_qwen2_vl, digits_small, tmp_path / "one", epochs=1, batch_size=8, stop_after_steps=None)
    two = one.model_copy(update={"output_dir": tmp_path / "two", "num_workers": 2})
    r1 = train(one)
    r2 = train(two)
    assert r2.checkpoint is not None and (tmp_path / "two" / "mmrm_reward.json").exists()
    assert r2.steps == r1.steps
    pairs = [p.pair for p in load_pairs(digits_small[1])[:8]]
    policy = MediaPolicy(allowed_roots=[digits_small[0].parent])
    m1 = RewardModel.from_pretrained(tmp_path / "one", device="cpu", media_policy=policy)
    m2 = RewardModel.from_pretrained(tmp_path / "two", device="cpu", media_policy=policy)
    s1 = m1.rewards([s for p in pairs for s in p.samples()])
    s2 = m2.rewards([s for p in pairs for s in p.samples()])
    base = RewardModel.from_backbone(tiny_qwen2_vl, seed=5, media_policy=policy).rewards([s for p in pairs for s in p.samples()])
    drift = max(abs(a - b) for a, b in zip(s1, s2))
    moved = max(abs(a - b) for a, b in zip(s1, base))
    print(f"ddp-vs-single drift {drift:.2e}, training moved rewards by {moved:.2e}")
    assert moved > 0.1, "training must have moved the rewards"
    assert drift < 0.01 * moved


@pytest.mark.slow
def test_digits_smoke_learns_from_pixels(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    """A short version of the digits demo: real pixels beat chance, blank images do not.

    The full demo (all 1,797 scans, 5 epochs) reaches >= 0.90; see BENCHMARKS.md.
    """
    real = build_digits_dataset(tmp_path / "real", limit=700, seed=0)
    blank = build_digits_dataset(tmp_path / "blank", limit=700, seed=0, blank=True)
    kw = dict(epochs=2, batch_size=32, lr=3e-4, max_length=256, seed=0)
    r_real = train(TrainConfig(backbone=tiny_qwen2_vl, output_dir=tmp_path / "m_real", train_data=real[0], eval_data=real[1], **kw))
    r_blank = train(TrainConfig(backbone=tiny_qwen2_vl, output_dir=tmp_path / "m_blank", train_data=blank[0], eval_data=blank[1], **kw))
    assert r_real.eval_accuracy is not None and r_real.eval_accuracy >= 0.7, r_real.eval_accuracy
    assert r_blank.eval_accuracy is not None and abs(r_blank.eval_accuracy - 0.5) < 0.15, r_blank.eval_accuracy


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divisible by num_workers"):
        TrainConfig(backbone=tmp_path, output_dir=tmp_path, train_data=tmp_path / "x.jsonl", batch_size=5, num_workers=2)
    f = tmp_path / "t.yaml"
    f.write_text("backbone: b\noutput_dir: o\ntrain_data: d.jsonl\nepochs: 0\n")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_yaml(f)
    cfg = TrainConfig.from_yaml(f.with_name("ok.yaml")) if False else None  # noqa: F841
    f.write_text("backbone: b\noutput_dir: o\ntrain_data: d.jsonl\n")
    assert TrainConfig.from_yaml(f).backbone == (tmp_path / "b").resolve()


@pytest.mark.gpu
def test_digits_trains_on_cuda_and_reloads_on_cpu(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    """Device placement from config: training on CUDA learns, and the checkpoint scores the same on the CPU."""
    real = build_digits_dataset(tmp_path / "real", limit=700, seed=0)
    cfg = TrainConfig(backbone=tiny_qwen2_vl, output_dir=tmp_path / "m", train_data=real[0], eval_data=real[1],
                      epochs=2, batch_size=32, lr=3e-4, max_length=256, seed=0, device="cuda")
    rm, result = train_loop(cfg, device="cuda")
    assert rm.device.type == "cuda" and next(rm.head.parameters()).dtype == torch.float32
    assert result.eval_accuracy is not None and result.eval_accuracy >= 0.7, result.eval_accuracy
    policy = MediaPolicy(allowed_roots=[real[0].parent])
    pairs = [p.pair for p in load_pairs(real[1])[:8]]
    on_gpu = RewardModel.from_pretrained(result.checkpoint, device="cuda", media_policy=policy).probabilities(pairs)
    on_cpu = RewardModel.from_pretrained(result.checkpoint, device="cpu", media_policy=policy).probabilities(pairs)
    assert max(abs(a - b) for a, b in zip(on_gpu, on_cpu)) < 1e-3  # fp32 on both; kernels differ slightly
