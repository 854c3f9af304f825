"""RL adapters driven with the exact call signatures and payloads of the frameworks.

Sources matched (read from each project's main branch):

* TRL: huggingface/trl ``f2cd57710ae345ea6428ae95363267fcf38a3dc8`` (2026-07-24), and the installed
  ``trl==1.16.0``: ``GRPOTrainer._calculate_rewards`` calls ``reward_func(prompts=, completions=,
  completion_ids=, **columns, trainer_state=, log_extra=, log_metric=)``; async functions are
  detected with ``inspect.iscoroutinefunction`` (main) / ``trl.trainer.utils.is_async_callable`` (1.16).
  The real trainer is exercised in ``test_grpo.py``.
* verl: volcengine/verl ``b178a3cd56f58b2d502255daba591e92833930a7`` (2026-01-29):
  ``verl/trainer/ppo/reward.py::get_custom_reward_fn`` (``_call_with_kwargs`` /
  ``_call_with_kwargs_async`` merge ``reward_kwargs``), the naive managers' per-sample
  ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` (the reward loop adds
  ``reward_router_address=``, ``reward_model_tokenizer=``), the legacy batch manager's
  ``compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=)`` (verl 0.9.1's reward loop
  registers no batch manager; see tests/test_verl_manager.py), and
  ``RewardLoopWorker._preprocess_reward_inputs`` + ``compute_score_disrm`` + ``_post_request``
  (``/classify``).
* OpenRLHF: OpenRLHF/OpenRLHF ``3c3be6234e0cb353e76bb8019947db9dfe99fca7`` (2026-08-13):
  ``SingleTurnAgentExecutor._fetch_rewards_via_http`` (aiohttp, 180 s total timeout, 5 tries 1 s
  apart, one query per request, shards over URLs).
"""

from __future__ import annotations

import asyncio
import doctest
import inspect
import logging
from functools import partial

import numpy as np
import pytest
from helpers import image_array, png_data_uri
from mmrm.rl import openrlhf as orl
from mmrm.rl import trl as trl_adapter
from mmrm.rl import verl
from mmrm.rl.trl import trl_reward_func
from mmrm.rl.reward_fn import RewardFn, RewardUnavailable, to_sample

IMG = png_data_uri(image_array(56, 56, seed=5))


@pytest.fixture(scope="module")
def rm(reward_checkpoint, media_root):
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(reward_checkpoint, device="cpu", media_policy=MediaPolicy(allowed_roots=[media_root]))


def _close(a, b, tol=1e-5):
    return np.max(np.abs(np.array(a, dtype=float) - np.array(b, dtype=float))) < tol


# ==================================================================================================
# TRL


def _trl_call(func, prompts, completions, **columns):
    """Call ``func`` exactly as GRPOTrainer._calculate_rewards does (sync path)."""
    metrics, extra = {}, {}
    kwargs = {**columns, "trainer_state": object(), "log_extra": lambda c, v: extra.setdefault(c, []).extend(v),
              "log_metric": lambda n, v: metrics.setdefault(n, []).append(v)}
    out = func(prompts=prompts, completions=completions, completion_ids=[[1, 2]] * len(prompts), **kwargs)
    return out, metrics, extra


def test_trl_multimodal_columns_and_metrics(rm):
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages

    pil = Image.fromarray(image_array(56, 56, seed=5))
    base = [{"role": "user", "content": "Which digit?"}]
    prompts = [prepare_multimodal_messages(base, images=[pil]) for _ in range(2)] + [base]
    completions = [[{"role": "assistant", "content": t}] for t in ("The digit is 3.", "Seven.", "Nine.")]
    func = trl_reward_func(RewardFn(rm), name="mmrm_rm", references_column="solution")
    out, metrics, extra = _trl_call(func, prompts, completions, images=[[pil], [pil], [pil]], solution=["3", "7", "9"])
    want = rm.rewards([to_sample([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMG}},
                                                               {"type": "text", "text": "Which digit?"}]}], c) for c in completions])
    assert _close(out, want, 1e-6)  # the prompt's PIL image and the data URI are the same pixels
    assert func.__name__ == "mmrm_rm" and metrics["mmrm_rm/invalid"] == [0.0] and not extra
    assert metrics["mmrm_rm/raw_mean"] == [pytest.approx(sum(want) / 3)]


def test_trl_failed_sample_is_none_and_logged_all_failed_raises(rm, caplog):
    func = trl_reward_func(RewardFn(rm))
    with caplog.at_level(logging.WARNING, logger="mmrm.reward"):
        out, metrics, extra = _trl_call(func, ["q", "q"], ["fine", "bad"], images=[None, ["/etc/passwd.png"]])
    assert out[0] is not None and out[1] is None
    assert metrics["mmrm/invalid"] == [1.0] and extra["mmrm_error"][0] is None
    assert extra["mmrm_error"][1].startswith("media_forbidden")
    assert "1 of 2 items have no reward" in caplog.text
    with pytest.raises(RewardUnavailable, match="every one of 2 samples failed"):
        _trl_call(func, ["q", "q"], ["a", "b"], images=[["/etc/a.png"], ["/etc/b.png"]])
    lenient = trl_reward_func(RewardFn(rm), on_all_failed="none")
    assert _trl_call(lenient, ["q"], ["a"], images=[["/etc/a.png"]])[0] == [None]


def test_trl_async_variant_is_detected_by_both_trl_versions(rm):
    import trl
    from trl.trainer.utils import is_async_callable

    assert trl.__version__ == trl_adapter.TRL_RELEASE  # the release the adapter's docstring was checked on

    func = trl_reward_func(RewardFn(rm), asynchronous=True, name="mmrm_async")
    assert inspect.iscoroutinefunction(func) and is_async_callable(func) and func.__name__ == "mmrm_async"
    sync = trl_reward_func(RewardFn(rm))
    assert not inspect.iscoroutinefunction(sync) and not is_async_callable(sync)
    got = asyncio.run(func(prompts=["2+2?"], completions=["4"], completion_ids=[[1]], trainer_state=None))
    assert got == sync(prompts=["2+2?"], completions=["4"], completion_ids=[[1]], trainer_state=None)


def test_trl_missing_references_column_is_a_clear_error(rm):
    func = trl_reward_func(RewardFn(rm), references_column="answer")
    with pytest.raises(KeyError, match="answer"):
        _trl_call(func, ["q"], ["a"], solution=["x"])


# ==================================================================================================
# verl: custom reward function


# verl/trainer/ppo/reward.py at b178a3c, verbatim: how reward_kwargs reach the function.
def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    merged_kwargs = {**kwargs, **extra_kwargs}
    return raw_fn(*args, **merged_kwargs)


async def _call_with_kwargs_async(raw_fn, extra_kwargs, *args, **kwargs):
    merged_kwargs = {**kwargs, **extra_kwargs}
    return await raw_fn(*args, **merged_kwargs)


def _get_custom_reward_fn(raw_fn, reward_kwargs):
    if not inspect.iscoroutinefunction(raw_fn):
        return partial(_call_with_kwargs, raw_fn, reward_kwargs)
    return partial(_call_with_kwargs_async, raw_fn, reward_kwargs)


def _verl_row_extra(prompt, images):
    # What a preprocessing script writes with mmrm.rl.verl.extra_info, after parquet + verl's
    # non_tensor_batch: lists may come back as numpy object arrays; verl adds num_turns/rollout_reward_scores.
    info = verl.extra_info(prompt, images, split="train", index=0)
    info[verl.IMAGES_KEY] = np.array(info[verl.IMAGES_KEY], dtype=object)
    info.update(num_turns=None, rollout_reward_scores={})
    return info


def test_verl_per_sample_sync_and_async_with_reward_kwargs(reward_checkpoint):
    kwargs = {"mmrm_checkpoint": str(reward_checkpoint)}
    prompt = [{"role": "user", "content": "Which digit is it?"}]
    info = _verl_row_extra(prompt, [IMG])
    sync_fn = _get_custom_reward_fn(verl.compute_score, kwargs)
    async_fn = _get_custom_reward_fn(verl.compute_score_async, kwargs)
    assert inspect.iscoroutinefunction(async_fn) and not inspect.iscoroutinefunction(sync_fn)
    # the naive managers' call (the reward loop adds the router kwargs when a reward model is enabled)
    got = sync_fn(data_source="digits", solution_str="The digit is 4.", ground_truth="4", extra_info=info)
    got_async = asyncio.run(async_fn(data_source="digits", solution_str="The digit is 4.", ground_truth="4",
                                     extra_info=info, reward_router_address=None, reward_model_tokenizer=None))
    want = RewardFn.from_checkpoint(reward_checkpoint)(["Which digit is it?"], ["The digit is 4."], images=[[IMG]])[0]
    assert got == got_async == {"score": want, "mmrm_invalid": 0.0}
    # BatchRewardManager's call: lists in, list out
    batch_fn = _get_custom_reward_fn(verl.compute_score_batch, kwargs)
    out = batch_fn(data_sources=np.array(["digits"] * 2, dtype=object), solution_strs=["The digit is 4.", "No idea."],
                   ground_truths=["4", "4"], extra_infos=[info, dict(info)])
    assert out[0]["score"] == pytest.approx(want, abs=1e-5) and out[1]["mmrm_invalid"] == 0.0  # batched: 1e-5


def test_verl_failure_policies(rm, caplog):
    bad_info = verl.extra_info("q", ["/etc/passwd.png"])
    raising = verl.VerlReward(RewardFn(rm))
    with pytest.raises(RewardUnavailable, match="media_forbidden"):
        raising.compute_score("src", "answer", None, bad_info)
    fb = verl.VerlReward(RewardFn(rm), on_invalid="fallback", fallback=-1.0)
    with caplog.at_level(logging.WARNING, logger="mmrm.reward"):
        assert fb.compute_score("src", "answer", None, bad_info) == {"score": -1.0, "mmrm_invalid": 1.0}
        # no prompt in extra_info: verl passes the response only, so the row says what is missing
        assert fb.compute_score("src", "answer", None, {"index": 3})["mmrm_invalid"] == 1.0
    assert fb.reward.stats.fallbacks == 2 and fb.reward.stats.fallbacks_by_kind == {"media_forbidden": 1, "invalid_input": 1}
    assert "gets the fallback -1.0 (media_forbidden" in caplog.text and "extra_info has no 'mmrm_prompt'" in caplog.text
    bare = verl.VerlReward(RewardFn(rm), return_dict=False)
    assert isinstance(bare.compute_score("src", "4", None, {"question": "2+2?"}), float)  # verl's gsm8k 'question' key
    with pytest.raises(ValueError, match="needs a finite number"):
        verl.VerlReward(RewardFn(rm), on_invalid="fallback")
    with pytest.raises(ValueError, match="unknown reward_kwargs"):
        verl.compute_score("s", "a", None, {}, mmrm_urll="x")


def test_verl_hybrid_with_ground_truth(rm):
    from mmrm.rl.shaping import Shaping, sigmoid

    vr = verl.VerlReward(RewardFn(rm, shaping=Shaping(hybrid=True)))
    raw = RewardFn(rm)(["2+2?", "2+2?"], ["The answer is \\boxed{4}", "5"])
    right = vr.compute_score("math", "The answer is \\boxed{4}", "4", {"mmrm_prompt": "2+2?"})
    wrong = vr.compute_score("math", "5", "4", {"mmrm_prompt": "2+2?"})
    assert right["score"] == 1.0 and wrong["score"] == pytest.approx(sigmoid(raw[1]))


# ==================================================================================================
# verl's reward-model path and OpenRLHF, against the running service (auth-less compat app)


async def _verl_post_request(url: str, payload: dict, max_retries: int = 16):
    # RewardLoopWorker._post_request at b178a3c (no auth header; 4xx not retried; 5xx retried).
    import aiohttp

    for attempt in range(max_retries):
        try:
            timeout = aiohttp.ClientTimeout(total=None)
            async with aiohttp.ClientSession(timeout=timeout) as session:  # noqa: SIM117 (verl's code, verbatim)
                async with session.post(url, json=payload) as resp:
                    resp.raise_for_status()
                    return await resp.json()
        except aiohttp.ClientResponseError as e:
            if 400 <= e.status < 500:
                raise
        await asyncio.sleep(min(2 ** attempt, 30))
    raise RuntimeError("max retries")


@pytest.mark.slow
def test_verl_disrm_classify_exact_request(rl_compat_service, rm, reward_checkpoint):
    from transformers import AutoTokenizer

    rm_tok = AutoTokenizer.from_pretrained(str(reward_checkpoint))  # the REWARD model's tokenizer, as verl uses
    chat = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2+2?"}]
    rollout_response = "2 + 2 = 4."
    # _preprocess_reward_inputs: raw_prompt + the decoded response (EOS text removed), rendered, BOS stripped
    chat.append({"role": "assistant", "content": rollout_response})
    rm_prompt = rm_tok.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
    if rm_tok.bos_token is not None and rm_prompt.startswith(rm_tok.bos_token):
        rm_prompt = rm_prompt[len(rm_tok.bos_token):]
    # compute_score_disrm (engine vllm). verl puts reward_model.model.path in "model"; mmrm needs the served name.
    payload = {"model": "tiny", "input": rm_prompt, "activation": False}
    output = asyncio.run(_verl_post_request(rl_compat_service["url"] + "/classify", payload))
    rm_score = output["data"][-1]["probs"][-1]
    want = RewardFn(rm)([chat[:2]], [rollout_response])[0]
    assert abs(rm_score - want) < 1e-5


async def _openrlhf_fetch(urls: list[str], queries, prompts, labels, images=None):
    """_fetch_rewards_via_http at 3c3be62 (shards over URLs; 180 s timeout; 5 tries 1 s apart), plus
    mmrm's optional ``images`` key. Returns (bodies, attempts used per shard)."""
    import aiohttp

    num_servers = len(urls)
    batch_size = (len(queries) + num_servers - 1) // num_servers
    timeout = aiohttp.ClientTimeout(total=180)
    tries: list[int] = []

    async def _post_request(url, data, try_max_times=5):
        for k in range(try_max_times):
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:  # noqa: SIM117 (OpenRLHF's code, verbatim)
                    async with session.post(url, json=data) as response:
                        response.raise_for_status()
                        tries.append(k + 1)
                        return await response.json()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(1)
        tries.append(try_max_times)
        raise RuntimeError(f"Request error for {try_max_times} times")

    tasks = []
    for i, rm_url in enumerate(urls):
        s, e = i * batch_size, min((i + 1) * batch_size, len(queries))
        payload = {"query": queries[s:e], "prompts": prompts[s:e], "labels": labels[s:e]}
        if images is not None:
            payload["images"] = images[s:e]
        tasks.append(asyncio.create_task(_post_request(rm_url, payload)))
    return await asyncio.gather(*tasks), tries


CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_openrlhf_exact_client_with_images_and_empty_shard(rl_compat_service, rm):
    url = rl_compat_service["url"] + "/get_reward"
    vl_prompt = CHATML.format("<|vision_start|><|image_pad|><|vision_end|>Which digit?")
    query = vl_prompt.replace("<|image_pad|>", "<|image_pad|>" * 4) + "The digit is 5.<|im_end|>"
    body = orl.request_body([query], [vl_prompt], ["5"], images=[[IMG]])
    (res, empty), _ = asyncio.run(_openrlhf_fetch([url, url], body["query"], body["prompts"], body["labels"], body["images"]))
    want = RewardFn(rm)([[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit?"}]}]],
                        ["The digit is 5."], images=[[IMG]])[0]
    assert abs(res["rewards"][0] - want) < 1e-5 and 0 < res["scores"][0] < 1
    # the second URL's shard is empty; OpenRLHF reads only rewards/scores/extra_logs
    assert (empty["rewards"], empty["scores"], empty["extra_logs"]) == ([], [], {})
    # the plain text form, unchanged
    text_q = CHATML.format("2+2?") + "4<|im_end|>"
    (res,), _ = asyncio.run(_openrlhf_fetch([url], [text_q], [CHATML.format("2+2?")], ["4"]))
    assert abs(res["rewards"][0] - RewardFn(rm)(["2+2?"], ["4"])[0]) < 1e-5


@pytest.mark.slow
def test_openrlhf_sized_service_takes_a_training_burst_on_first_try(rl_compat_service, service):
    sizing = rl_compat_service["sizing"]
    assert orl.check_service(rl_compat_service["args"], sizing) == []
    n = sizing.peak_requests  # every sample of a generation batch scored at once
    queries = [CHATML.format(f"Question {i}?") + f"Answer {i}.<|im_end|>" for i in range(n)]
    prompts = [CHATML.format(f"Question {i}?") for i in range(n)]

    async def burst(url):
        return await asyncio.gather(*(_openrlhf_fetch([url], [q], [p], [None]) for q, p in zip(queries, prompts)))

    got = asyncio.run(burst(rl_compat_service["url"] + "/get_reward"))
    assert all(tries == [1] for _, tries in got), "a sized service must answer every request on the first try"
    assert len({r[0]["rewards"][0] for r, _ in got}) > 1
    # the session's main app admits 6 requests at once: check_service says so before a run finds out
    main_args = {"admission": {"max_inflight": 6}, "models": [{"name": "tiny", "max_ongoing_requests": 64}]}
    problems = orl.check_service(main_args, sizing)
    assert len(problems) == 1 and "admission.max_inflight=6" in problems[0]


def test_openrlhf_sizing_rules_and_defaults_match_the_service():
    from mmrm.rm import service_defaults as d
    from mmrm.serve.config import Admission, Limits, ModelConfig

    # the shared defaults are the serve config's (read from a config that leaves every knob out)
    assert (d.MAX_INFLIGHT, d.REQUEST_TIMEOUT_S) == (Admission().max_inflight, Limits().request_timeout_s)
    entry = ModelConfig(name="m", checkpoint="/models/m")
    assert (d.NUM_REPLICAS, d.MAX_ONGOING_REQUESTS, d.MAX_QUEUED_REQUESTS) == (
        entry.num_replicas, entry.max_ongoing_requests, entry.max_queued_requests)
    assert orl._DEFAULTS == {"max_inflight": d.MAX_INFLIGHT, "request_timeout_s": d.REQUEST_TIMEOUT_S,
                             "num_replicas": d.NUM_REPLICAS, "max_ongoing_requests": d.MAX_ONGOING_REQUESTS,
                             "max_queued_requests": d.MAX_QUEUED_REQUESTS}
    s = orl.size_service(rollout_batch_size=64, n_samples_per_prompt=8, eval_batch_size=256, eval_n_samples_per_prompt=4,
                         items_per_s_per_replica=5)
    assert s.peak_requests == 1024 and s.num_replicas == 4 and s.request_timeout_s < orl.CLIENT_TIMEOUT_S
    assert s.num_replicas * s.max_ongoing_requests >= s.peak_requests and s.drain_s <= orl.CLIENT_TIMEOUT_S / 3
    assert orl.check_service({"models": [{"name": "m"}]}, s)[0].startswith("admission.max_inflight=256")
    slow = orl.size_service(rollout_batch_size=64, n_samples_per_prompt=8, items_per_s_per_replica=1, num_replicas=1)
    assert "add replicas" in slow.notes[0]
    assert any("drains in" in p for p in orl.check_service({"admission": {"max_inflight": 4096},
                                                              "models": [{"name": "m", "max_queued_requests": -1}]}, slow))
    assert "180 s client timeout" in orl.check_service({"limits": {"request_timeout_s": 200}, "admission": {"max_inflight": 4096},
                                                        "models": [{"name": "m", "max_queued_requests": 4096}]}, s)[0]


@pytest.mark.parametrize("module", [trl_adapter, verl, orl])
def test_adapter_docstrings_run(module):
    assert doctest.testmod(module).failed == 0


def test_recorded_commits():
    assert trl_adapter.TRL_COMMIT == "f2cd57710ae345ea6428ae95363267fcf38a3dc8"
    assert verl.VERL_COMMIT == "b178a3cd56f58b2d502255daba591e92833930a7"
    assert orl.OPENRLHF_COMMIT == "3c3be6234e0cb353e76bb8019947db9dfe99fca7"
