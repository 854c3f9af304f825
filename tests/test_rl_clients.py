"""The compat routes through the RL frameworks' OWN client code, over real HTTP on a real Serve app.

``/get_reward`` is driven by OpenRLHF 0.11.2 (``openrlhf/utils/agent.py``:
``SingleTurnAgentExecutor.execute`` and ``_fetch_rewards_via_http``; then
``openrlhf/trainer/ppo_utils/samples_generator.py::SamplesGenerator._process_response_into_experience``
and ``experience.py::Experience.concat_experiences``, the first thing the experience maker does
with a rollout batch). ``/classify`` is read by verl 0.9.1
(``verl/experimental/reward_loop/reward_loop.py``: ``RewardLoopWorker.compute_score_batch`` ->
``compute_score`` -> ``compute_score_disrm`` -> ``_post_request``; then
``reward_manager/base.py::RewardManagerBase.assemble_rm_scores``). Error bodies are checked against
vLLM 0.32.0's own ``ErrorResponse`` / ``ClassificationResponse`` classes.

Both frameworks are installed ``--no-deps`` by ``scripts/setup.sh --dev`` into ``.venv/rl-clients``
(client modules only). Importing them pulls modules that the code paths under test never execute,
so ONLY those are replaced by minimal stub modules in ``sys.modules`` while the clients load (and
removed afterwards): ``vllm``, ``vllm.inputs``, ``vllm.utils`` (OpenRLHF's vLLM engine module,
imported by the samples generator for ``SamplingParams`` / ``batch_vllm_engine_call``),
``pylatexenc`` (OpenRLHF's math grader, imported by ``openrlhf.utils``), ``tensordict`` and
``omegaconf`` when not installed, and verl's ``verl.protocol``, ``verl.single_controller.ray.base``,
``verl.trainer.ppo.reward`` and ``verl.experimental.reward_loop.reward_model`` (the DataProto
implementation, worker pools, reward-manager loading and the reward-model server launcher, used
only by ``RewardLoopManager`` and ``RewardLoopWorker.__init__``). What the tests pass IN is
plain: OpenRLHF's ``llm_engine`` argument is a scripted engine returning token ids as vLLM would;
verl's worker is built without ``__init__`` (which loads tokenizers from hub paths) with the
attributes it reads set, and its ``DataProto`` argument is a stand-in with the fields
``_preprocess_reward_inputs`` and ``assemble_rm_scores`` read.

mmrm's own OpenRLHF executor (``mmrm.rl.openrlhf_agent.AgentExecutor``, a subclass of 0.11.2's
``SingleTurnAgentExecutor``) runs here too, with a VLM processor, and so do checks of what the
README says about 0.11.2 (URL rotation without empty shards; no images for ``reward_func`` files
and agent instances).

The tiny models' ``max_length`` is 200 here, so a long rollout is an over-long item. Every test
compares good items with the same items scored alone (1e-5), checks the fill value and flag of the
bad ones, and checks that ``mmrm_errors_total`` rose by kind.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import VllmErrorResponse, image_part, image_uri, text_part, wait_until

pytestmark = pytest.mark.slow

MAX_LEN = 200
FILL = -7.5
CLIENTS = Path(sys.prefix) / "rl-clients"  # scripts/setup.sh --dev: pip install --no-deps --target
RELEASES = {"openrlhf": "0.11.2", "verl": "0.9.1"}

GOOD_IMG = image_uri(56, 56, seed=4)
BROKEN_IMG = "data:image/png;base64," + "QUJD" * 40  # valid base64, not an image
LONG = "the " * 300  # far over MAX_LEN tokens
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP"]  # the limit a broken image names (mmrm's media policy)
ANY = object()  # a limit not checked here (its value is the media policy's, tested in test_media.py)


def limit_ok(got: Any, want: Any) -> bool:
    return want is ANY or got == want


# --------------------------------------------------------------------------------------------------
# The frameworks' client modules


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__path__ = []  # importable as a package, so `from vllm.inputs import ...` finds the child stub
    return mod


class _Unused:
    """Stands in for a class that the code under test names but never instantiates."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{type(self).__name__}: a stub was used by the code under test")


@pytest.fixture(scope="module")
def clients() -> SimpleNamespace:
    """OpenRLHF 0.11.2's and verl 0.9.1's client classes (see the module doc for the stubs)."""
    if not (CLIENTS / "openrlhf").is_dir() or not (CLIENTS / "verl").is_dir():
        pytest.fail(f"OpenRLHF/verl client code is not installed in {CLIENTS}: run scripts/setup.sh --dev")
    found = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(CLIENTS)])}
    assert {k: found.get(k) for k in RELEASES} == RELEASES, found

    stubs = {
        "vllm": _stub("vllm", SamplingParams=_Unused),
        "vllm.inputs": _stub("vllm.inputs", TokensPrompt=_Unused),
        "vllm.utils": _stub("vllm.utils", random_uuid=lambda: "unused"),
        "pylatexenc": _stub("pylatexenc"),
        "pylatexenc.latex2text": _stub("pylatexenc.latex2text", LatexNodes2Text=_Unused),
        "verl.protocol": _stub("verl.protocol", DataProto=_Unused, pad_dataproto_to_divisor=_Unused),
        "verl.single_controller.ray.base": _stub("verl.single_controller.ray.base", RayResourcePool=_Unused),
        "verl.trainer.ppo.reward": _stub("verl.trainer.ppo.reward", load_reward_manager=_Unused,
                                         resolve_reward_manager_cls=_Unused),
        "verl.experimental.reward_loop.reward_model": _stub("verl.experimental.reward_loop.reward_model",
                                                            RewardModelManager=_Unused),
    }
    stubs["pylatexenc"].latex2text = stubs["pylatexenc.latex2text"]
    for name, attrs in {"tensordict": {"TensorDict": _Unused},
                        "omegaconf": {"DictConfig": _Unused, "ListConfig": _Unused, "OmegaConf": _Unused,
                                      "open_dict": _Unused}}.items():
        if importlib.util.find_spec(name) is None:
            stubs[name] = _stub(name, **attrs)
    for name in stubs:
        assert name not in sys.modules, f"{name} is already imported; it must not be replaced by a stub"
    sys.path.append(str(CLIENTS))
    sys.modules.update(stubs)
    try:
        from openrlhf.trainer.ppo_utils.experience import Experience
        from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
        from openrlhf.utils.agent import SingleTurnAgentExecutor
        from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
        from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

        yield SimpleNamespace(SingleTurnAgentExecutor=SingleTurnAgentExecutor, SamplesGenerator=SamplesGenerator,
                              Experience=Experience, RewardLoopWorker=RewardLoopWorker,
                              RewardManagerBase=RewardManagerBase)
    finally:
        # The classes keep working; later imports (and other tests) see no stub and no client package.
        for name in list(sys.modules):
            if name in stubs or name.split(".")[0] in ("openrlhf", "verl"):
                del sys.modules[name]
        sys.path.remove(str(CLIENTS))


# --------------------------------------------------------------------------------------------------
# Two apps on the session's Serve: "fill" (on_invalid: fill on both routes) and "strict" (defaults)


def _wait_ready(url: str) -> None:
    wait_until(lambda: httpx.get(url + "/readyz", timeout=30).status_code == 200, timeout=180, interval=0.5,
               ignore=(httpx.TransportError,), message=f"{url} never became ready")


@pytest.fixture(scope="module")
def apps(service: dict, tiny_qwen2: Path, tiny_qwen2_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``{"fill": url, "strict": url, "tokenizer": ...}``: auth-less apps (these clients send no token)
    with the session's VL reward model ("vl") and a text-only one ("text"), both at max_length 200."""
    from ray import serve
    from transformers import AutoTokenizer

    from mmrm.rm.reward_model import RewardModel
    from mmrm.serve.app import build_app

    text_ckpt = RewardModel.from_backbone(tiny_qwen2, seed=5).save_pretrained(tmp_path_factory.mktemp("rm") / "text-rm")
    common = {"num_cpus": 0.5, "max_batch_size": 16, "batch_wait_timeout_s": 0.02, "max_length": MAX_LEN}
    models = [{"name": "vl", "checkpoint": str(service["checkpoint"]), **common},
              {"name": "text", "checkpoint": str(text_ckpt), **common}]
    limits = {"media": {"allowed_roots": [str(service["media_root"])]}}
    fill = {"models": models, "limits": limits, "ingress_num_cpus": 0.25,
            "compat": {"openrlhf": {"model": "vl", "on_invalid": "fill", "fill_value": FILL},
                       "classify": {"on_invalid": "fill", "fill_value": FILL},
                       "classify_default_model": "vl"}}
    # The defaults (on_invalid: error); /get_reward scores with the text-only model here.
    strict = {"models": models[::-1], "limits": limits, "ingress_num_cpus": 0.25}
    serve.run(build_app(fill), name="rlfill", route_prefix="/rlfill", blocking=False)
    serve.run(build_app(strict), name="rlstrict", route_prefix="/rlstrict", blocking=False)
    urls = {"fill": service["url"] + "/rlfill", "strict": service["url"] + "/rlstrict"}
    for url in urls.values():
        _wait_ready(url)
    return {**urls, "root": service["url"], "tokenizer": AutoTokenizer.from_pretrained(tiny_qwen2_vl)}


def post(url: str, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes non-ASCII, so a lone surrogate travels as the JSON escape a client would send
    return httpx.post(url + path, content=json.dumps(body), headers={"content-type": "application/json"}, timeout=120)


def errors_total(url: str, route: str) -> dict[str, float]:
    """``mmrm_errors_total{route}`` by kind, from the app's /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("mmrm_errors_total{") and f'route="{route}"' in line:
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = out.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def rose(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}


def chatml(tok: Any, messages: list[dict], *, generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def user(*parts: Any) -> list[dict]:
    return [{"role": "user", "content": list(parts) if len(parts) > 1 or not isinstance(parts[0], str) else parts[0]}]


# --------------------------------------------------------------------------------------------------
# OpenRLHF 0.11.2 -> /get_reward


class ScriptedEngine:
    """OpenRLHF's ``llm_engine`` argument: answers with a scripted response, as vLLM's
    ``RequestOutput`` would (token ids, text, finish reason); ``extra_ids`` are appended raw (a
    special token the policy emitted)."""

    def __init__(self, tok: Any, response: str, extra_ids: tuple[int, ...] = ()) -> None:
        self.tok, self.response, self.extra_ids = tok, response, extra_ids

    async def generate(self, prompt_token_ids: list[int], sampling_params: Any, multi_modal_data: Any = None) -> Any:
        ids = self.tok(self.response, add_special_tokens=False)["input_ids"] + list(self.extra_ids)
        ids += [self.tok.convert_tokens_to_ids("<|im_end|>")]
        out = SimpleNamespace(token_ids=ids, text=self.tok.decode(ids), finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def with_images(url: str, images: list[Any]) -> Any:
    """OpenRLHF sends no images; for a rollout that has some, this replaces the executor's
    transport with one that adds mmrm's ``images`` list (the rest of ``execute`` stays OpenRLHF's)."""

    async def fetch(queries: list[str], prompts: list[str], labels: list[Any]) -> list[dict]:
        async with httpx.AsyncClient(timeout=120) as c:
            r = await c.post(url, json={"query": queries, "prompts": prompts, "labels": labels, "images": images})
            r.raise_for_status()
            return [r.json()]

    return fetch


def rollouts(tok: Any) -> dict[str, dict]:
    """name -> {prompt (as OpenRLHF's dataset renders it), engine, images (mmrm extension) or None}."""
    text_prompt = chatml(tok, user("Describe the weather."), generation_prompt=True)
    img_prompt = chatml(tok, user({"type": "image"}, {"type": "text", "text": "Which digit is it?"}),
                        generation_prompt=True)
    vision_end = tok.convert_tokens_to_ids("<|vision_end|>")
    return {
        "good_text": {"prompt": text_prompt, "engine": ScriptedEngine(tok, "Sunny and warm."), "images": None},
        "good_image": {"prompt": img_prompt, "engine": ScriptedEngine(tok, "The digit is 6."), "images": [[GOOD_IMG]]},
        "too_long": {"prompt": text_prompt, "engine": ScriptedEngine(tok, LONG), "images": None},
        "broken_image": {"prompt": img_prompt, "engine": ScriptedEngine(tok, "The digit is 2."), "images": [[BROKEN_IMG]]},
        "missing_image": {"prompt": img_prompt, "engine": ScriptedEngine(tok, "The digit is 3."), "images": None},
        "special_token": {"prompt": text_prompt, "engine": ScriptedEngine(tok, "Rain", (vision_end,)), "images": None},
    }


def run_openrlhf(clients: SimpleNamespace, url: str, tok: Any, plan: dict[str, dict]) -> dict[str, dict]:
    """``SingleTurnAgentExecutor.execute`` for every rollout at once (as OpenRLHF's engines run them)."""

    async def one(name: str, r: dict) -> tuple[str, dict]:
        ex = clients.SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")
        if r["images"] is not None:
            ex._fetch_rewards_via_http = with_images(url + "/get_reward", r["images"])
        out = await ex.execute(r["prompt"], f"label-{name}", SimpleNamespace(max_tokens=None, logprobs=None),
                               4096, tok, r["engine"])
        return name, out

    async def all_() -> dict[str, dict]:
        return dict(await asyncio.gather(*(one(n, r) for n, r in plan.items())))

    return asyncio.run(all_())


def experiences(clients: SimpleNamespace, tok: Any, outputs: dict[str, dict]) -> Any:
    """OpenRLHF's samples generator turns each response into an Experience; the experience maker
    first concatenates a micro-batch of them."""
    gen = clients.SamplesGenerator.__new__(clients.SamplesGenerator)  # the method reads no generator state
    exps = [gen._process_response_into_experience(o, max_len=4096) for o in outputs.values()]
    return clients.Experience.concat_experiences(exps, tok.pad_token_id)


def test_openrlhf_rollouts_with_bad_items_get_the_fill_value_and_build_experiences(apps, clients) -> None:
    """OpenRLHF 0.11.2's executor and samples generator against ``on_invalid: fill``: an over-long
    rollout, one with a broken image, one whose prompt's image is missing, and one whose response
    holds a media special token all get the fill value and the ``mmrm_invalid`` flag; no ``None``
    reward, no exception, and the experience batch builds."""
    tok, url = apps["tokenizer"], apps["fill"]
    plan = rollouts(tok)
    before = errors_total(url, "/get_reward")
    outs = run_openrlhf(clients, url, tok, plan)
    after = errors_total(url, "/get_reward")

    for name, out in outs.items():
        assert out["reward"] is not None and out["scores"] is not None, name
    bad = {"too_long", "broken_image", "missing_image", "special_token"}
    for name, out in outs.items():
        flag = out["extra_logs"]["mmrm_invalid"]
        if name in bad:
            assert out["reward"] == [FILL] and flag == [1.0], (name, out["reward"])
        else:
            assert out["reward"][0] != FILL and flag == [0.0], name
    assert rose(before, after) == {"input_too_long": 1, "invalid_media": 1, "invalid_input": 1,
                                   "unsupported_input": 1}

    # The good rollouts score as they do alone, and as they do in one batch with every bad query
    # (OpenRLHF's own batched fetch: one POST with all the queries).
    for name in ("good_text", "good_image"):
        q = tok.decode(outs[name]["observation_tokens"], skip_special_tokens=False)
        r = post(url, "/get_reward", {"query": [q], "prompts": [plan[name]["prompt"]], "images": plan[name]["images"]})
        assert r.json()["rewards"][0] == pytest.approx(outs[name]["reward"][0], abs=1e-5)
    text_only = [n for n in plan if plan[n]["images"] is None]
    queries = [tok.decode(outs[n]["observation_tokens"], skip_special_tokens=False) for n in text_only]
    ex = clients.SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")
    (body,) = asyncio.run(ex._fetch_rewards_via_http(queries, [plan[n]["prompt"] for n in text_only], text_only))
    for n, reward, flag in zip(text_only, body["rewards"], body["extra_logs"]["mmrm_invalid"]):
        want = outs[n]["reward"][0]
        assert reward == pytest.approx(want, abs=1e-5) and flag == (1.0 if n in bad else 0.0), n
    by_index = {e["index"]: e for e in body["errors"]}
    too_long = by_index[text_only.index("too_long")]
    assert too_long["kind"] == "input_too_long" and too_long["limit"] == MAX_LEN
    assert too_long["field"].startswith(f"query[{text_only.index('too_long')}]")

    batch = experiences(clients, tok, outs)
    assert batch.rewards.shape == (len(outs), 1) and bool(batch.rewards.isfinite().all())
    assert batch.info["mmrm_invalid"].flatten().tolist() == [1.0 if n in bad else 0.0 for n in outs]
    assert sorted(batch.rewards.flatten().tolist()).count(FILL) == len(bad)


def test_openrlhf_error_policy_leaves_a_rollout_without_reward_and_fails_the_batch(apps, clients) -> None:
    """Why ``on_invalid: error`` warns at start-up: OpenRLHF 0.11.2 retries the 422 five times, logs,
    and leaves the rollout's reward ``None``; building the experience batch then fails."""
    tok, url = apps["tokenizer"], apps["strict"]
    plan = {k: v for k, v in rollouts(tok).items() if k in ("good_text", "too_long")}
    before = errors_total(url, "/get_reward")
    outs = run_openrlhf(clients, url, tok, plan)
    assert outs["good_text"]["reward"] is not None and outs["too_long"]["reward"] is None
    assert rose(before, errors_total(url, "/get_reward")) == {"input_too_long": 5}  # 5 tries, each counted
    r = post(url, "/get_reward", {"query": [tok.decode(outs["too_long"]["observation_tokens"])],
                                  "prompts": [plan["too_long"]["prompt"]]})
    assert r.status_code == 422 and r.json()["error"]["limit"] == MAX_LEN
    with pytest.raises((AttributeError, TypeError, ValueError)):
        experiences(clients, tok, outs)


def test_get_reward_mixed_batch_every_failure_kind(apps) -> None:
    """One request mixing good queries with every kind of item failure (mmrm's ``images`` extension
    carries the media): each bad query gets the fill value, its flag and its error entry; the good
    ones score as alone; the body is what OpenRLHF can tensorize."""
    import torch

    tok, url = apps["tokenizer"], apps["fill"]
    text_prompt = chatml(tok, user("Describe the weather."), generation_prompt=True)
    img_prompt = chatml(tok, user({"type": "image"}, {"type": "text", "text": "Which digit is it?"}),
                        generation_prompt=True)
    end = "<|im_end|>"
    items = {  # name -> (query, prompt, images, kind, field prefix, limit)
        "good_text": (text_prompt + "Sunny and warm." + end, text_prompt, None, None, None, None),
        "good_image": (img_prompt.replace("<|image_pad|>", "<|image_pad|>" * 4) + "The digit is 6." + end, img_prompt,
                       [GOOD_IMG], None, None, None),
        "broken_image": (img_prompt + "A cat." + end, img_prompt, [BROKEN_IMG], "invalid_media",
                         ".prompt[0].content[0].image_url", IMAGE_FORMATS),
        "refused_path": (img_prompt + "A cat." + end, img_prompt, ["/etc/hostname"], "media_forbidden",
                         ".prompt[0].content[0].image_url", ANY),
        "missing_image": (img_prompt + "A cat." + end, img_prompt, None, "invalid_input", "images[", 1),
        "too_long": (text_prompt + LONG + end, text_prompt, None, "input_too_long", "", MAX_LEN),
        "lone_surrogate": (text_prompt + "bad \ud800 text" + end, text_prompt, None, "invalid_input", "",
                           "UTF-8 encodable text"),
        "placeholder_text": (text_prompt + "see <|vision_end|> here" + end, text_prompt, None, "unsupported_input", "",
                             "no media placeholder tokens in text"),
        "not_a_prefix": (text_prompt + "fine" + end, "<|im_start|>user\nsomething else", None, "invalid_input", "", None),
    }
    names = list(items)
    body = {"query": [v[0] for v in items.values()], "prompts": [v[1] for v in items.values()],
            "labels": names, "images": [v[2] for v in items.values()]}
    before = errors_total(url, "/get_reward")
    r = post(url, "/get_reward", body)
    assert r.status_code == 200, r.text
    out = r.json()
    want_kinds: dict[str, float] = {}
    errors = {e["index"]: e for e in out["errors"]}
    for i, (name, (query, prompt, images, kind, field, limit)) in enumerate(items.items()):
        if kind is None:
            alone = post(url, "/get_reward", {"query": [query], "prompts": [prompt], "images": [images]}).json()
            assert out["rewards"][i] == pytest.approx(alone["rewards"][0], abs=1e-5), name
            assert out["extra_logs"]["mmrm_invalid"][i] == 0.0 and i not in errors
            continue
        want_kinds[kind] = want_kinds.get(kind, 0) + 1
        assert out["rewards"][i] == FILL and out["extra_logs"]["mmrm_invalid"][i] == 1.0, name
        e = errors[i]
        where = field if field.startswith("images[") else f"query[{i}]{field}"
        assert e["kind"] == kind and e["field"].startswith(where) and limit_ok(e.get("limit"), limit), (name, e)
    assert rose(before, errors_total(url, "/get_reward")) == want_kinds
    # samples_generator._process_response_into_experience: torch.tensor of each value
    for i in range(len(names)):
        torch.tensor([[out["rewards"][i]]]), torch.tensor([[out["scores"][i]]])
        for v in out["extra_logs"].values():
            torch.tensor([[v[i]]])


def test_get_reward_wrong_modality_fails_the_request_with_the_error_policy(apps) -> None:
    """Images given to a text-only reward model: with the default policy the request answers 422
    naming the field, and the item counts in ``mmrm_errors_total``."""
    tok = apps["tokenizer"]
    prompt = chatml(tok, user({"type": "image"}, {"type": "text", "text": "Which digit?"}), generation_prompt=True)
    before = errors_total(apps["strict"], "/get_reward")
    r = post(apps["strict"], "/get_reward", {"query": [prompt + "Six.<|im_end|>"], "prompts": [prompt],
                                             "images": [[GOOD_IMG]]})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["kind"] == "unsupported_input" and err["field"].startswith("query[0]")
    assert rose(before, errors_total(apps["strict"], "/get_reward")) == {"unsupported_input": 1}


class RecordingEngine(ScriptedEngine):
    """A scripted engine that also keeps the ``multi_modal_data`` OpenRLHF hands to vLLM."""

    def __init__(self, tok: Any, response: str) -> None:
        super().__init__(tok, response)
        self.mm: list[Any] = []

    async def generate(self, prompt_token_ids: list[int], sampling_params: Any, multi_modal_data: Any = None) -> Any:
        self.mm.append(multi_modal_data)
        return await super().generate(prompt_token_ids, sampling_params, multi_modal_data)


def test_openrlhf_executor_sends_each_rollouts_images(apps, clients, tiny_qwen2_vl: Path) -> None:
    """``mmrm.rl.openrlhf_agent.AgentExecutor`` (OpenRLHF 0.11.2's ``SingleTurnAgentExecutor``
    subclass, what ``--train.agent_func_path`` loads) with a VLM processor: two rollouts run
    concurrently, each with its own image; each reward equals ``/v1/score`` of that image, prompt
    and response, and differs from the other image's. The stock executor, same rollout, reaches the
    route with placeholders and no image: an item failure (fill value, flag) whose record names the
    limit, never a 4xx."""
    from transformers import AutoProcessor

    from mmrm.rl.openrlhf_agent import OPENRLHF_RELEASE, AgentExecutor

    assert OPENRLHF_RELEASE == RELEASES["openrlhf"]
    proc = AutoProcessor.from_pretrained(tiny_qwen2_vl)
    tok, url = apps["tokenizer"], apps["fill"]
    question = "Which digit is it?"
    prompt = chatml(tok, user({"type": "image"}, {"type": "text", "text": question}), generation_prompt=True)
    imgs = {"six": image_uri(56, 56, seed=21), "nine": image_uri(56, 56, seed=22)}
    answers = {"six": "The digit is 6.", "nine": "The digit is 9."}
    engines = {k: RecordingEngine(tok, answers[k]) for k in imgs}
    params = SimpleNamespace(max_tokens=None, logprobs=None)

    async def run(executor: Any) -> dict[str, dict]:
        outs = await asyncio.gather(*(executor.execute(prompt, k, params, 4096, proc, engines[k], images=[imgs[k]])
                                      for k in imgs))
        return dict(zip(imgs, outs))

    ex = AgentExecutor(base_url=url)
    assert isinstance(ex, clients.SingleTurnAgentExecutor)
    outs = asyncio.run(run(ex))
    for k in imgs:
        assert engines[k].mm[0] is not None and len(engines[k].mm[0]["image"]) == 1  # vLLM got the pixels
        want = post(url, "/v1/score", {"model": "vl", "items": [{"prompt": user(image_part(imgs[k]), text_part(question)),
                                                                 "response": answers[k]}]}).json()["data"][0]["value"]
        assert outs[k]["reward"] == [pytest.approx(want, abs=1e-5)] and outs[k]["extra_logs"]["mmrm_invalid"] == [0.0], k
        other = next(o for o in imgs if o != k)
        swapped = post(url, "/v1/score", {"model": "vl", "items": [{"prompt": user(image_part(imgs[other]),
                                                                                   text_part(question)),
                                                                    "response": answers[k]}]}).json()["data"][0]["value"]
        assert swapped != pytest.approx(want, abs=1e-4), k  # the image is used, and it is this rollout's

    before = errors_total(url, "/get_reward")
    stock = asyncio.run(run(clients.SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")))
    assert rose(before, errors_total(url, "/get_reward")) == {"invalid_input": 2}
    for k in imgs:
        assert stock[k]["reward"] == [FILL] and stock[k]["extra_logs"]["mmrm_invalid"] == [1.0], k
    q = proc.decode(stock["six"]["observation_tokens"], skip_special_tokens=False)
    assert q.count("<|image_pad|>") > 1  # the processor expanded the placeholder
    body = post(url, "/get_reward", {"query": [q], "prompts": [prompt], "labels": ["six"]})
    assert body.status_code == 200, body.text
    (err,) = body.json()["errors"]
    assert err["kind"] == "invalid_input" and err["field"] == "images[0]" and err["limit"] == 1
    assert "OpenRLHF 0.11.2" in err["message"] and "agent_func_path" in err["message"]


def requests_total(url: str, route: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(url + "/metrics", timeout=30).text.splitlines()
               if line.startswith("mmrm_requests_total{") and f'route="{route}"' in line)


def test_openrlhf_rotates_over_urls_and_sends_no_empty_shard(apps, clients) -> None:
    """OpenRLHF 0.11.2 splits ``--reward.remote_url`` at commas; its executor sends each one-query
    request to the next URL in turn (``cycle``) and posts no empty shard: four rollouts over two
    URLs are two requests to each app, and every request carries a query."""
    tok = apps["tokenizer"]
    prompt = chatml(tok, user("Describe the weather."), generation_prompt=True)
    urls = [apps["fill"] + "/get_reward", apps["strict"] + "/get_reward"]
    before = [requests_total(apps[k], "/get_reward") for k in ("fill", "strict")]
    ex = clients.SingleTurnAgentExecutor(remote_rm_url=urls)

    async def four() -> list[dict]:
        return [await ex.execute(prompt, "x", SimpleNamespace(max_tokens=None, logprobs=None), 4096, tok,
                                 ScriptedEngine(tok, f"Sunny, {i}."))
                for i in range(4)]

    outs = asyncio.run(four())
    assert all(o["reward"] is not None and len(o["reward"]) == 1 for o in outs)
    after = [requests_total(apps[k], "/get_reward") for k in ("fill", "strict")]
    assert [a - b for a, b in zip(after, before)] == [2, 2]


def test_openrlhf_reward_func_and_agent_instances_get_no_images(clients, tmp_path: Path) -> None:
    """Why images need mmrm's executor: OpenRLHF 0.11.2 calls a ``reward_func`` file with
    ``(queries, prompts, labels)`` only, and an ``AgentInstance`` gets ``{"observation", "label"}``
    at reset (``{"observation_text", "action_text", "label", "sampling_params"}`` per step); the
    executor's ``execute`` is the one place the sample's ``images`` arrive."""
    import inspect

    from openrlhf.utils.agent import AgentExecutorBase, MultiTurnAgentExecutor

    seen = tmp_path / "seen.json"
    func = tmp_path / "reward_func.py"
    func.write_text("import json, sys\n"
                    "def reward_func(*args, **kwargs):\n"
                    f"    open({str(seen)!r}, 'w').write(json.dumps([len(args), sorted(kwargs)]))\n"
                    "    return {'rewards': [0.0], 'scores': [0.0], 'extra_logs': {}}\n")
    ex = clients.SingleTurnAgentExecutor(remote_rm_url=str(func))
    asyncio.run(ex._fetch_rewards_via_func(["q"], ["p"], ["l"]))
    assert json.loads(seen.read_text()) == [3, []]

    src = inspect.getsource(MultiTurnAgentExecutor.execute)
    assert 'initial_states = {"observation": prompt, "label": label}' in src
    assert '"observation_text": observation_text' in src and "images" not in src.split("states = {", 1)[1].split("}", 1)[0]
    assert "images" in inspect.signature(AgentExecutorBase.execute).parameters


def test_openrlhf_executor_needs_the_service_address(clients, monkeypatch) -> None:
    from mmrm.rl.openrlhf_agent import AgentExecutor

    monkeypatch.delenv("MMRM_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="MMRM_BASE_URL"):
        AgentExecutor()
    monkeypatch.setenv("MMRM_BASE_URL", "http://rm.internal:8000/")
    assert AgentExecutor().reward_endpoints == ["http://rm.internal:8000/get_reward"]
    # what --train.agent_func_path does with the file the README names (OpenRLHF 0.11.2's own loader)
    from openrlhf.trainer.ray.vllm_engine import _load_agent_executor

    from mmrm.rl.openrlhf import AGENT_FILE

    ex = _load_agent_executor(AGENT_FILE)
    assert isinstance(ex, clients.SingleTurnAgentExecutor) and type(ex).__name__ == "AgentExecutor"
    assert ex.reward_endpoints == ["http://rm.internal:8000/get_reward"] and ex.reward_func is None


# --------------------------------------------------------------------------------------------------
# verl 0.9.1 -> /classify


class VerlRows:
    """The part of verl's ``DataProto`` that ``RewardLoopWorker`` and ``assemble_rm_scores`` read:
    ``len``, ``[i:j]`` (a smaller batch), ``[i]`` (an item with ``.batch`` / ``.non_tensor_batch``),
    and ``.batch`` of the whole batch (prompts left-padded, responses right-padded, as verl's are)."""

    def __init__(self, rows: list[SimpleNamespace]) -> None:
        import torch

        self.rows = rows
        self.batch = {k: torch.stack([r.batch[k] for r in rows]) for k in ("prompts", "responses", "attention_mask")}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int | slice) -> Any:
        return VerlRows(self.rows[k]) if isinstance(k, slice) else self.rows[k]


def verl_rows(tok: Any, samples: list[tuple[list[dict], str]], *, plen: int = 48, rlen: int = 400) -> VerlRows:
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for messages, response in samples:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        p = tok(text, add_special_tokens=False)["input_ids"][-plen:]
        r = (tok(response, add_special_tokens=False)["input_ids"] + [eos])[:rlen]
        prompts = torch.tensor([pad] * (plen - len(p)) + p)
        responses = torch.tensor(r + [pad] * (rlen - len(r)))
        mask = torch.tensor([0] * (plen - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (rlen - len(r)))
        rows.append(SimpleNamespace(batch={"prompts": prompts, "responses": responses, "attention_mask": mask},
                                    non_tensor_batch={"raw_prompt": np.array(messages, dtype=object)}))
    return VerlRows(rows)


def verl_worker(clients: SimpleNamespace, tok: Any, url: str, model_path: str = "/models/reward-model") -> Any:
    """A ``RewardLoopWorker`` as its ``__init__`` leaves it for a vLLM-served discriminative reward
    model (``reward.reward_model.enable``, rollout ``vllm``, no custom reward function). verl sends
    ``model_path`` as ``model``: the fill app maps any unknown name to its reward model
    (``compat.classify_default_model``); the strict app has no such fallback, so a served name."""
    w = clients.RewardLoopWorker.__new__(clients.RewardLoopWorker)
    w.config = SimpleNamespace(reward=SimpleNamespace(
        custom_reward_function=SimpleNamespace(path=None),
        reward_model=SimpleNamespace(enable=True, model_path=model_path, rollout=SimpleNamespace(name="vllm"))))
    w.reward_router_address = url.removeprefix("http://")  # verl builds http://{address}/classify
    w.input_tokenizer = w.reward_model_tokenizer = tok
    return w


VERL_SAMPLES = {  # name -> (raw_prompt, response, kind of failure or None)
    "good_a": (user("Which digit is in the image?"), "The digit is 6.", None),
    "good_b": (user("Describe the weather."), "Sunny and warm.", None),
    "too_long": (user("Describe the weather."), LONG, "input_too_long"),
    "image_prompt": (user({"type": "image"}, {"type": "text", "text": "Which digit?"}), "Six.", "unsupported_input"),
}


def test_verl_reward_loop_reads_a_number_for_every_sample(apps, clients) -> None:
    """verl 0.9.1's ``compute_score_batch`` (one ``/classify`` request per sample, ``probs[-1]`` of
    ``data[-1]``) with ``on_invalid: fill``: an over-long sample and one whose rendered prompt holds an
    image placeholder read the fill value; the good ones read what the route answers for them alone
    and in a batch with the bad ones; ``assemble_rm_scores`` tensorizes them all."""
    tok, url = apps["tokenizer"], apps["fill"]
    data = verl_rows(tok, [(p, r) for p, r, _ in VERL_SAMPLES.values()])
    before = errors_total(url, "/classify")
    out = asyncio.run(verl_worker(clients, tok, url).compute_score_batch(data))
    scores = [o["reward_score"] for o in out]
    kinds = [k for _, _, k in VERL_SAMPLES.values()]
    assert rose(before, errors_total(url, "/classify")) == {k: 1 for k in kinds if k}
    texts = [tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r, _ in VERL_SAMPLES.values()]
    batch = post(url, "/classify", {"model": "/models/reward-model", "input": texts, "use_activation": False}).json()
    for i, (name, kind) in enumerate(zip(VERL_SAMPLES, kinds)):
        if kind:
            assert scores[i] == FILL and batch["data"][i]["error"]["kind"] == kind, name
            continue
        alone = post(url, "/classify", {"model": "/models/reward-model", "input": texts[i], "use_activation": False})
        assert scores[i] == pytest.approx(alone.json()["data"][-1]["probs"][-1], abs=1e-5), name
        assert batch["data"][i]["probs"][-1] == pytest.approx(scores[i], abs=1e-5) and "error" not in batch["data"][i]
        assert scores[i] != FILL
    rm_scores = clients.RewardManagerBase.assemble_rm_scores(data, scores)
    assert rm_scores.shape == data.batch["responses"].shape and rm_scores.sum().item() == pytest.approx(sum(scores), abs=1e-4)


def test_verl_error_policy_raises_at_once_on_the_4xx(apps, clients) -> None:
    """With the default policy a bad sample answers 422, and verl 0.9.1's ``_post_request`` raises it
    without a retry: the whole ``compute_score_batch`` fails (what the start-up warning says)."""
    import aiohttp

    tok, url = apps["tokenizer"], apps["strict"]
    picked = [VERL_SAMPLES["good_b"], VERL_SAMPLES["too_long"]]
    before = errors_total(url, "/classify")
    t0 = time.monotonic()
    with pytest.raises(aiohttp.ClientResponseError) as ei:
        asyncio.run(verl_worker(clients, tok, url, model_path="text").compute_score_batch(
            verl_rows(tok, [(p, r) for p, r, _ in picked])))
    assert ei.value.status == 422 and time.monotonic() - t0 < 60
    assert rose(before, errors_total(url, "/classify")) == {"input_too_long": 1}  # tried once


def test_classify_mixed_batch_every_failure_kind(apps) -> None:
    """``/classify`` with ``on_invalid: fill``: one ``input`` list mixing good texts with every kind of
    text failure, and one ``messages`` request per media failure (the chat form carries one
    conversation); bad items read the fill value and carry an ``error`` record, good ones equal
    their score alone."""
    tok, url = apps["tokenizer"], apps["fill"]

    def render(prompt: list[dict], response: str) -> str:
        return tok.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)

    texts = {  # name -> (text, kind, field, limit)
        "good_a": (render(user("Which digit?"), "The digit is 6."), None, None, None),
        "good_b": (render(user("Describe the weather."), "Sunny."), None, None, None),
        "too_long": (render(user("Describe the weather."), LONG), "input_too_long", "input[2]", MAX_LEN),
        "lone_surrogate": (render(user("Describe the weather."), "bad \ud800"), "invalid_input", "input[3]",
                           "UTF-8 encodable text"),
        "placeholder_in_prompt": (render(user(PLACEHOLDER + "Which?"), "Six."), "unsupported_input", "input[4]", None),
        "special_token": (render(user("Describe."), "see <|vision_end|> here"), "unsupported_input", "input[5]",
                          "no media placeholder tokens in text"),
        "no_template": ("User: hi\nAssistant: hello", "invalid_input", "input[6]", None),
    }
    before = errors_total(url, "/classify")
    r = post(url, "/classify", {"model": "vl", "input": [t for t, *_ in texts.values()], "use_activation": False})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    for i, (name, (text, kind, field, limit)) in enumerate(texts.items()):
        if kind is None:
            alone = post(url, "/classify", {"model": "vl", "input": text, "use_activation": False}).json()
            assert data[i]["probs"] == [pytest.approx(alone["data"][0]["probs"][0], abs=1e-5)] and "error" not in data[i]
            continue
        e = data[i]["error"]
        assert data[i]["probs"] == [FILL] and e["kind"] == kind and e["field"].startswith(field), (name, e)
        assert limit_ok(e["limit"], limit), (name, e)

    chats = {  # name -> (model, messages, kind, field prefix)
        "broken_image": ("vl", user(image_part(BROKEN_IMG), text_part("What is it?")), "invalid_media",
                         "messages.prompt[0].content[0]"),
        "refused_path": ("vl", user(image_part("/etc/hostname"), text_part("What is it?")), "media_forbidden",
                         "messages.prompt[0].content[0]"),
        "wrong_modality": ("text", user(image_part(GOOD_IMG), text_part("What is it?")), "unsupported_input", "messages"),
        "bad_role": ("vl", [{"role": "tool", "content": "x"}], "unsupported_input", "messages[0].role"),
    }
    for name, (model, msgs, kind, field) in chats.items():
        body = {"model": model, "messages": msgs + [{"role": "assistant", "content": "A cat."}], "use_activation": True}
        r = post(url, "/classify", body)
        assert r.status_code == 200, (name, r.text)
        (rec,) = r.json()["data"]
        assert rec["probs"] == [pytest.approx(1 / (1 + np.exp(-FILL)))], name  # activation on: sigmoid(fill)
        assert rec["error"]["kind"] == kind and rec["error"]["field"].startswith(field), (name, rec["error"])
    good = post(url, "/classify", {"model": "vl", "messages": user(image_part(GOOD_IMG), text_part("Which digit?"))
                                   + [{"role": "assistant", "content": "Six."}]}).json()["data"][0]
    assert "error" not in good and good["probs"][0] != pytest.approx(1 / (1 + np.exp(-FILL)))

    want: dict[str, float] = {}
    for kind in [t[1] for t in texts.values()] + [c[2] for c in chats.values()]:
        if kind:
            want[kind] = want.get(kind, 0) + 1
    assert rose(before, errors_total(url, "/classify")) == want


def test_classify_errors_are_vllm_error_responses(apps) -> None:
    """Every error ``/classify`` answers itself has vLLM 0.32.0's ``ErrorResponse`` shape (checked
    against a transcription here and vLLM's own classes in its venv) and mmrm's field and limit."""
    tok, url = apps["tokenizer"], apps["strict"]
    good = tok.apply_chat_template(user("Describe the weather.") + [{"role": "assistant", "content": "Sunny."}],
                                   tokenize=False)
    long = tok.apply_chat_template(user("Describe the weather.") + [{"role": "assistant", "content": LONG}],
                                   tokenize=False)
    cases = [  # body, status, vLLM type, field, limit
        ({"model": "text", "input": [good, long], "use_activation": False}, 422, "UnprocessableEntityError",
         "input[1].messages", MAX_LEN),
        ({"model": "text", "input": 5}, 422, "UnprocessableEntityError", "input", None),
        ({"model": "text", "input": [[1, 2, 3]]}, 422, "UnprocessableEntityError", "input", None),
        ({"model": "nope", "input": good}, 404, "NotFoundError", "model", ["text", "vl"]),
    ]
    bodies = []
    for body, status, type_, field, limit in cases:
        r = post(url, "/classify", body)
        assert r.status_code == status, r.text
        v = VllmErrorResponse.model_validate(r.json())
        assert (v.error.code, v.error.type, v.error.param) == (status, type_, field), r.json()
        assert r.json()["error"]["field"] == field and r.json()["error"]["limit"] == limit
        bodies.append(r.json())
    ok = post(apps["fill"], "/classify", {"model": "vl", "input": [good, long], "use_activation": False}).json()

    sys.path.insert(0, str(Path(__file__).parent))
    import vllm_server

    py = vllm_server.venv_python()
    if not py.exists():
        pytest.skip(f"vLLM's venv ({py}) is not created; scripts/setup.sh --dev creates it")
    check = ("import json, sys\n"
             "from vllm.entrypoints.serve.engine.protocol import ErrorResponse\n"
             "from vllm.entrypoints.pooling.classify.protocol import ClassificationResponse\n"
             "d = json.load(sys.stdin)\n"
             "for b in d['errors']: ErrorResponse.model_validate(b)\n"
             "r = ClassificationResponse.model_validate(d['ok'])\n"
             "print(json.dumps([x.probs[-1] for x in r.data]))\n")
    run = subprocess.run([str(py), "-c", check], input=json.dumps({"errors": bodies, "ok": ok}), text=True,
                         capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    probs = json.loads(run.stdout.strip().splitlines()[-1])
    assert probs[1] == FILL and probs[0] == pytest.approx(ok["data"][0]["probs"][0])
