"""mmrm's verl reward manager run by verl 0.9.1's OWN reward loop, on verl's own data classes.

verl 0.9.1 and what its ``DataProto`` and reward loop import (tensordict 0.10.0, omegaconf 2.3.0,
...) are installed ``--no-deps`` into ``.venv/rl-clients`` by ``scripts/setup.sh --dev``; they
import and run beside the project's torch and transformers (checked below), so nothing is stubbed:
the batch is a real ``verl.protocol.DataProto``, and verl's ``RewardLoopManager`` (built from a
config as the trainer builds it, ``reward.reward_manager.source=importlib`` naming
``pkg://mmrm.rl.verl_manager``) starts its ``RewardLoopWorker`` Ray actors on the session's Ray
cluster, pads and chunks the batch across them, calls ``run_single`` per sample and assembles
``rm_scores`` itself (``verl/experimental/reward_loop/reward_loop.py``). The manager lives in a Ray
actor whose runtime environment puts ``.venv/rl-clients`` on ``PYTHONPATH``, so verl's worker
actors (its children) import verl; the rest of the session's Ray workers never see it.

Expectations are the service's ``/v1/score`` of each sample, posted here as plain JSON (image as a
PNG data URI of the same pixels), never what the manager produced.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import image_array, pil_image, png_data_uri

pytestmark = pytest.mark.slow

CLIENTS = Path(sys.prefix) / "rl-clients"  # scripts/setup.sh --dev
RELEASES = {"verl": "0.9.1", "tensordict": "0.10.0", "omegaconf": "2.3.0"}
FILL = -3.25
N = 2  # rollout.n: samples per prompt
WORKERS = 2  # reward.num_workers
IMG_SEEDS = (11, 12, 13)


@pytest.fixture(scope="module")
def verl() -> Any:
    """verl 0.9.1's DataProto beside this venv's torch/transformers (see the module doc)."""
    if not (CLIENTS / "verl").is_dir() or not (CLIENTS / "tensordict").is_dir():
        pytest.fail(f"verl and its data classes' dependencies are not installed in {CLIENTS}: run scripts/setup.sh --dev")
    found = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(CLIENTS)])}
    assert {k: found.get(k) for k in RELEASES} == RELEASES, found
    sys.path.append(str(CLIENTS))
    try:
        import tensordict
        import torch
        import transformers
        from verl.protocol import DataProto

        yield SimpleNamespace(DataProto=DataProto, versions={"torch": torch.__version__,
                                                             "transformers": transformers.__version__,
                                                             "tensordict": tensordict.__version__})
    finally:
        for name in list(sys.modules):
            if name.split(".")[0] == "verl":
                del sys.modules[name]
        sys.path.remove(str(CLIENTS))


@pytest.fixture(scope="module")
def driver(service: dict, tiny_qwen2_vl: Path, verl: Any) -> Any:
    """A Ray actor holding verl's ``RewardLoopManager`` for mmrm's manager against the live service."""
    import ray

    config = {
        "actor_rollout_ref": {"model": {"path": str(tiny_qwen2_vl), "tokenizer_path": None}, "rollout": {"n": N}},
        "reward": {
            "num_workers": WORKERS,
            "custom_reward_function": {"path": None, "name": "compute_score"},
            "reward_manager": {"source": "importlib", "name": "MmrmRewardManager",
                               "module": {"path": "pkg://mmrm.rl.verl_manager", "name": "custom_reward_manager"}},
            "reward_model": {"enable": False, "enable_resource_pool": False},
            "reward_kwargs": {"mmrm_url": service["url"], "mmrm_model": "tiny", "mmrm_on_invalid": "fallback",
                              "mmrm_fallback": FILL, "mmrm_group_wait_s": 1.0},
        },
    }

    @ray.remote(num_cpus=0)
    class VerlDriver:
        def __init__(self, config: dict) -> None:
            from omegaconf import OmegaConf
            from verl.experimental.reward_loop.reward_loop import RewardLoopManager

            self.manager = RewardLoopManager(OmegaConf.create(config))

        def compute_rm_score(self, data: Any) -> Any:
            return self.manager.compute_rm_score(data)

        def workers(self) -> int:
            return len(self.manager.reward_loop_workers)

        def score_each(self, data: Any, order: list[int], stagger_s: float) -> list[dict]:
            """What verl's agent loop does with no reward model in verl (``agent_loop.py::
            _compute_score``): each finished sample, as its own DataProto, to a reward worker's
            ``compute_score``; here all to the first worker, one every ``stagger_s`` in ``order``."""
            import time as _time

            import ray as _ray

            worker = self.manager.reward_loop_workers[0]
            refs = {}
            for i in order:
                refs[i] = worker.compute_score.remote(data[i:i + 1])
                _time.sleep(stagger_s)
            return [_ray.get(refs[i]) for i in range(len(data))]

    env = {"PYTHONPATH": str(CLIENTS), "MMRM_API_TOKEN": service["token"]}
    actor = VerlDriver.options(runtime_env={"env_vars": env}).remote(config)
    assert ray.get(actor.workers.remote(), timeout=600) == WORKERS
    yield actor
    ray.kill(actor)  # its RewardLoopWorker actors go with it


def test_verl_data_classes_import_beside_the_project_stack(verl: Any) -> None:
    """verl 0.9.1 declares ``transformers<5.11``; its DataProto and reward loop still import and run
    here, with this venv's torch and transformers (so nothing of verl runs in a venv of its own)."""
    import torch

    assert verl.versions["tensordict"] == "0.10.0"
    assert int(verl.versions["transformers"].split(".")[0]) >= 5
    d = verl.DataProto.from_dict(tensors={"x": torch.arange(6).reshape(3, 2)},
                                 non_tensors={"uid": np.array(["a", "a", "b"], dtype=object)})
    assert [c.non_tensor_batch["uid"].tolist() for c in d.chunk(3)] == [["a"], ["a"], ["b"]]


# --------------------------------------------------------------------------------------------------
# A batch as verl's trainer hands it to the reward loop


def objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def rollout_batch(verl: Any, tok: Any, groups: list[dict], *, plen: int = 64, rlen: int = 32) -> Any:
    """``groups``: [{"uid", "prompt" (raw_prompt messages), "responses", "mm" (multi_modal_data) or None}];
    each group's samples are adjacent (``repeat(interleave=True)``), prompts left-padded, responses
    right-padded, as verl's agent loop leaves them."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cols: dict[str, list[Any]] = {"prompts": [], "responses": [], "attention_mask": [], "raw_prompt": [], "uid": [],
                                  "data_source": [], "reward_model": [], "multi_modal_data": []}
    for g in groups:
        p = tok("<|im_start|>user\nprompt<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        for text in g["responses"]:
            r = (tok(text, add_special_tokens=False)["input_ids"] + [eos])[:rlen]
            cols["prompts"].append(torch.tensor([pad] * (plen - len(p)) + p))
            cols["responses"].append(torch.tensor(r + [pad] * (rlen - len(r))))
            cols["attention_mask"].append(torch.tensor([0] * (plen - len(p)) + [1] * (len(p) + len(r)) + [0] * (rlen - len(r))))
            cols["raw_prompt"].append(g["prompt"])
            cols["uid"].append(g["uid"])
            cols["data_source"].append("mmrm-test")
            cols["reward_model"].append({"ground_truth": None, "style": "model"})
            cols["multi_modal_data"].append(g.get("mm") or {})
    tensors = {k: torch.stack(cols[k]) for k in ("prompts", "responses", "attention_mask")}
    return verl.DataProto.from_dict(tensors=tensors, non_tensors={k: objects(v) for k, v in cols.items() if k not in tensors})


def image_prompt(seed: int, question: str) -> list[dict]:
    """verl's RLHFDataset turns ``<image>`` into a ``{"type": "image", "image": <PIL>}`` part."""
    return [{"role": "user", "content": [{"type": "image", "image": pil_image(56, 56, seed=seed)},
                                         {"type": "text", "text": question}]}]


def wire_prompt(seed: int | None, question: str) -> list[dict]:
    """The same prompt as mmrm's wire takes it (written here independently of the adapter)."""
    content: list[dict] = [{"type": "text", "text": question}]
    if seed is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": png_data_uri(image_array(56, 56, seed=seed))}})
    return [{"role": "user", "content": content}]


def alone(service: dict, prompt: list[dict], response: str) -> float:
    r = httpx.post(service["url"] + "/v1/score", headers=service["headers"], timeout=120,
                   json={"model": "tiny", "items": [{"prompt": prompt, "response": response}]})
    r.raise_for_status()
    (item,) = r.json()["data"]
    assert item["value"] is not None, item
    return float(item["value"])


def requests_total(service: dict, route: str) -> float:
    text = httpx.get(service["url"] + "/metrics", headers=service["headers"], timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mmrm_requests_total{") and f'route="{route}"' in line)


GROUPS = [  # uid, raw prompt, responses, multi_modal_data, the wire prompt (image seed or None, question)
    {"uid": "g-digit", "prompt": image_prompt(IMG_SEEDS[0], "Which digit is it?"),
     "responses": ["The digit is 6.", "It is a seven."], "wire": (IMG_SEEDS[0], "Which digit is it?")},
    # a placeholder filled from multi_modal_data (where a recipe or custom agent loop puts the images)
    {"uid": "g-mm", "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}],
     "mm": {"image": [pil_image(56, 56, seed=IMG_SEEDS[1])]},
     "responses": ["A blurry square.", "Noise."], "wire": (IMG_SEEDS[1], "What is shown?")},
    {"uid": "g-text", "prompt": [{"role": "user", "content": "Describe the weather."}],
     "responses": ["Sunny and warm.", "Rain all day."], "wire": (None, "Describe the weather.")},
]


def expected(service: dict, groups: list[dict]) -> list[float]:
    return [alone(service, wire_prompt(*g["wire"]), r) for g in groups for r in g["responses"]]


def check_rm_scores(out: Any, data: Any, want: list[float | None]) -> list[float]:
    """verl's ``rm_scores``: zero but at each response's last valid token, where the reward is."""
    scores = out.batch["rm_scores"]
    assert tuple(scores.shape) == tuple(data.batch["responses"].shape)
    last = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:].sum(dim=1) - 1
    got = [float(scores[i, int(last[i])]) for i in range(len(want))]
    assert float(scores.abs().sum()) == pytest.approx(sum(abs(g) for g in got), abs=1e-4)
    for g, w in zip(got, want):
        if w is not None:
            assert g == pytest.approx(w, abs=1e-5)
    return got


def test_whole_groups_go_through_rank_with_their_images(service: dict, tiny_qwen2_vl: Path, verl: Any, driver: Any) -> None:
    """Two groups, two workers: verl's chunking gives each worker one whole group, which is scored
    as a group (``/v1/rank``, one request per worker); every reward equals ``/v1/score`` of that
    sample alone, images included (one from ``raw_prompt``'s parts, one from ``multi_modal_data``)."""
    import ray
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    groups = GROUPS[:2]
    data = rollout_batch(verl, tok, groups)
    want = expected(service, groups)
    ranks, scores = requests_total(service, "/v1/rank"), requests_total(service, "/v1/score")
    t0 = time.monotonic()
    out = ray.get(driver.compute_rm_score.remote(data), timeout=600)
    took = time.monotonic() - t0
    check_rm_scores(out, data, want)
    assert out.non_tensor_batch["mmrm_grouped"].tolist() == [1.0] * 4
    assert out.non_tensor_batch["mmrm_invalid"].tolist() == [0.0] * 4
    assert set(out.meta_info["reward_extra_keys"]) == {"mmrm_invalid", "mmrm_grouped"}
    assert requests_total(service, "/v1/rank") - ranks == WORKERS
    assert requests_total(service, "/v1/score") - scores == 0
    assert took < 1.0 + 60  # no group waited for missing members (group_wait_s is 1 s)
    # the image is really used: the same answers to the same question without it score differently
    assert want[0] != pytest.approx(alone(service, wire_prompt(None, "Which digit is it?"), "The digit is 6."), abs=1e-4)


def test_a_group_split_across_workers_falls_back_to_score(service: dict, tiny_qwen2_vl: Path, verl: Any,
                                                          driver: Any) -> None:
    """Three groups on two workers: verl's chunks are samples 0-2 and 3-5, so the middle group is
    split; its halves wait ``mmrm_group_wait_s`` and are scored item by item (``/v1/score``) with the
    same rewards, while the other groups still go through ``/v1/rank``. A prompt with an image
    placeholder and no image reads the fallback, flagged."""
    import ray
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    broken = {"uid": "g-noimage", "prompt": [{"role": "user", "content": [{"type": "image"},
                                                                          {"type": "text", "text": "Which digit?"}]}],
              "responses": ["Six.", "Seven."]}
    groups = [GROUPS[2], GROUPS[0], broken]
    data = rollout_batch(verl, tok, groups)
    want = expected(service, groups[:2]) + [None, None]
    ranks, scores = requests_total(service, "/v1/rank"), requests_total(service, "/v1/score")
    out = ray.get(driver.compute_rm_score.remote(data), timeout=600)
    got = check_rm_scores(out, data, want)
    assert out.non_tensor_batch["mmrm_grouped"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert out.non_tensor_batch["mmrm_invalid"].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert got[4:] == [FILL, FILL]
    # worker 1: group g-text whole (rank); worker 0's half of g-digit and worker 1's half each alone
    # (score); the placeholder group never reaches the service (it fails while converting)
    assert requests_total(service, "/v1/rank") - ranks == 1
    assert requests_total(service, "/v1/score") - scores == 2


def test_samples_arriving_one_by_one_still_meet_their_group(service: dict, tiny_qwen2_vl: Path, verl: Any,
                                                            driver: Any) -> None:
    """verl 0.9.1's usual flow without a reward model in verl: the agent loop sends each finished
    sample alone to a reward worker. Samples of two groups arriving interleaved, 0.2 s apart, on one
    worker are scored as their two groups (``/v1/rank``), within ``mmrm_group_wait_s``."""
    import ray
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    groups = [GROUPS[0], GROUPS[2]]
    data = rollout_batch(verl, tok, groups)
    want = expected(service, groups)
    ranks, scores = requests_total(service, "/v1/rank"), requests_total(service, "/v1/score")
    outs = ray.get(driver.score_each.remote(data, [0, 2, 1, 3], 0.2), timeout=600)
    for o, w in zip(outs, want):
        assert o["reward_score"] == pytest.approx(w, abs=1e-5)
        assert o["reward_extra_info"] == {"mmrm_invalid": 0.0, "mmrm_grouped": 1.0}
    assert requests_total(service, "/v1/rank") - ranks == 2
    assert requests_total(service, "/v1/score") - scores == 0


# --------------------------------------------------------------------------------------------------
# What the README says about verl 0.9.1's reward loop, checked on its code


def test_verl_registers_no_batch_manager_and_remote_refuses_async(verl: Any) -> None:
    """verl 0.9.1's reward loop knows five managers; ``batch`` is not one (so a batched
    ``compute_score`` has no caller there), and ``remote`` asserts that the function is not async."""
    from omegaconf import OmegaConf
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
    from verl.trainer.ppo.reward import get_custom_reward_fn

    import mmrm.rl.verl as adapter

    assert set(REWARD_MANAGER) == {"naive", "rate_limited", "dapo", "remote", "gdpo"}
    with pytest.raises(ValueError, match="Unknown reward manager: batch"):
        get_reward_manager_cls("batch")
    cfg = OmegaConf.create({"reward": {"num_workers": 1, "custom_reward_function": {
        "path": adapter.__file__, "name": "compute_score_async", "reward_kwargs": {"mmrm_url": "http://127.0.0.1:9"}}}})
    fn = get_custom_reward_fn(cfg)
    with pytest.raises(AssertionError, match="Async reward score is not supported"):
        get_reward_manager_cls("remote")(cfg, tokenizer=None, compute_score=fn)


def test_verl_reward_model_path_has_no_outside_address(verl: Any) -> None:
    """With ``reward_model.enable`` verl 0.9.1 always starts its own reward servers and router
    (``RewardModelManager``) and takes the router address from them; its reward-model config has no
    field for an address of a server started elsewhere. So mmrm reaches verl through a reward
    manager (``MmrmRewardManager``) or a custom function, not through the reward-model path."""
    import dataclasses
    import inspect

    from verl.experimental.reward_loop.reward_loop import RewardLoopManager
    from verl.workers.config import RewardModelConfig

    src = inspect.getsource(RewardLoopManager.__init__)
    assert "self.reward_model_manager = RewardModelManager(config.reward.reward_model, rm_resource_pool)" in src
    assert "self.reward_router_address = self.reward_model_manager.get_router_address()" in src
    names = {f.name for f in dataclasses.fields(RewardModelConfig)}
    assert "model_path" in names and not {n for n in names if any(w in n for w in ("address", "url", "host", "port"))}


def test_verl_naive_manager_awaits_compute_score_async(service: dict, tiny_qwen2_vl: Path, verl: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The custom-function path at 0.9.1: ``get_custom_reward_fn`` loads ``compute_score_async`` from
    mmrm's file with ``reward_kwargs``, the ``naive`` manager awaits it per sample, and the reward
    equals ``/v1/score`` of the prompt and image carried in ``extra_info``."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.trainer.ppo.reward import get_custom_reward_fn

    import mmrm.rl.verl as adapter

    monkeypatch.setenv("MMRM_API_TOKEN", service["token"])
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    cfg = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": adapter.__file__, "name": "compute_score_async",
        "reward_kwargs": {"mmrm_url": service["url"], "mmrm_model": "tiny"}}}})
    fn = get_custom_reward_fn(cfg)
    manager = get_reward_manager_cls("naive")(cfg, tokenizer=tok, compute_score=fn)
    assert manager.is_async_reward_score
    img = png_data_uri(image_array(56, 56, seed=31))
    info = adapter.extra_info("Which digit is it?", [img])
    resp = tok("The digit is 4.", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    data = verl.DataProto.from_dict(
        tensors={"prompts": torch.zeros(1, 4, dtype=torch.long), "responses": torch.tensor([resp]),
                 "attention_mask": torch.ones(1, 4 + len(resp), dtype=torch.long)},
        non_tensors={"data_source": objects(["x"]), "reward_model": objects([{"ground_truth": None}]),
                     "extra_info": objects([info])})
    out = manager.loop.run_until_complete(manager.run_single(data))  # verl's worker loop (the manager's executor calls use it)
    want = alone(service, wire_prompt(31, "Which digit is it?"), "The digit is 4.")
    assert out["reward_score"] == pytest.approx(want, abs=1e-5)
    assert out["reward_extra_info"]["mmrm_invalid"] == 0.0
