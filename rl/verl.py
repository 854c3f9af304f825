"""verl custom reward functions backed by mmrm (and where verl's other reward paths stand).

For a VLM run, or to score GRPO groups together, use the reward manager
:class:`mmrm.rl.verl_manager.MmrmRewardManager` instead: it reads each sample's images from the
batch itself. The functions here are verl's ``custom_reward_function`` path.

Checked against verl 0.9.1 (the released wheel; first read at commit
``b178a3cd56f58b2d502255daba591e92833930a7``), and run with its own code in
``tests/test_verl_manager.py``:

* ``verl/trainer/ppo/reward.py::get_custom_reward_fn`` loads ``custom_reward_function.name`` from the
  file ``custom_reward_function.path`` and merges ``custom_reward_function.reward_kwargs`` into every
  call's keyword arguments; an ``async def`` function (``inspect.iscoroutinefunction``) is awaited.
* The reward loop registers five managers (``verl/experimental/reward_loop/reward_manager/``):
  ``naive``, ``rate_limited``, ``dapo``, ``gdpo`` and ``remote``; ``reward_manager.name=batch``
  fails with "Unknown reward manager: batch". ``naive``, ``dapo``, ``gdpo`` and ``rate_limited`` call
  ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` once per sample and
  await an async function (a sync one runs in an executor); ``remote`` runs a SYNC function in Ray
  actors and asserts that it is not async, so use :func:`compute_score` there, never
  :func:`compute_score_async`. ``solution_str`` is the decoded response only (special tokens
  skipped), ``ground_truth`` is ``reward_model.ground_truth``, ``extra_info`` is the dataset row's
  ``extra_info`` dict (plus ``num_turns`` and ``rollout_reward_scores``). The result is a number, or
  a dict with ``"score"`` whose other keys become ``reward_extra_info`` lists (so every sample must
  return the same keys).
* :func:`compute_score_batch` has NO caller in verl 0.9.1 (no batch manager is registered); it is
  kept for your own batched calls (lists in, a list out).

**How images (and the prompt) travel on this path.** verl hands a reward function the response
text only, so the prompt and its images ride in the row's ``extra_info``:
``extra_info["mmrm_prompt"]`` (a string or chat messages, image parts allowed) and
``extra_info["mmrm_images"]`` (a list of image sources: data URIs, base64, paths under the service's
allowed roots, URLs; or ``{"bytes", "path"}`` dicts as parquet stores images). Build them with
:func:`extra_info` in the dataset preprocessing script. Without ``mmrm_prompt`` the ``question``
key (verl's gsm8k/geo3k preprocessors write it) is used, and ``images`` without ``mmrm_images``. A
row with neither prompt key fails (see the policy below).

**Failure policy (verl needs a number).** ``on_invalid="raise"`` (default): a sample without a
reward raises :class:`~mmrm.rl.reward_fn.RewardUnavailable` with its reason, which stops verl's
step (verl has no per-sample error slot). ``on_invalid="fallback"``: return ``fallback`` instead,
log a WARNING with the reason, and count it (``RewardFn.stats.fallbacks_by_kind``); with
``return_dict=True`` (default) every result is ``{"score": s, "mmrm_invalid": 0.0 | 1.0}``, so the
fallbacks are also visible per sample in verl's ``reward_extra_info``.

**Zero-code use.** This module's own :func:`compute_score` and :func:`compute_score_async` read
their settings from ``reward_kwargs``::

    reward.custom_reward_function.path=$(python -c 'import mmrm.rl.verl as m; print(m.__file__)')
    reward.custom_reward_function.name=compute_score_async
    +reward.custom_reward_function.reward_kwargs.mmrm_url=http://rm.internal:8000
    +reward.custom_reward_function.reward_kwargs.mmrm_model=rm-small
    +reward.custom_reward_function.reward_kwargs.mmrm_on_invalid=fallback
    +reward.custom_reward_function.reward_kwargs.mmrm_fallback=0.0

(``mmrm_judge`` + ``mmrm_rubric`` for a served judge, ``mmrm_checkpoint`` for an in-process reward
model, ``mmrm_hybrid=true`` for ``I(match) + (1 - I(match)) * sigmoid(r)`` against
``ground_truth``.) The bearer token comes from ``$MMRM_API_TOKEN``.

**verl's reward-model path** (``reward.reward_model.enable=true`` without a custom function) cannot
reach an outside mmrm: at 0.9.1 ``RewardLoopManager`` always starts verl's own reward servers and
router (``RewardModelManager``) and takes the address from them; ``RewardModelConfig`` has no
setting for an address of a server started elsewhere. (The request it sends,
``RewardLoopWorker.compute_score_disrm``: the conversation rendered with the reward model's
tokenizer, POSTed as ``{"model", "input", "use_activation": false}`` to ``/classify``, reading
``data[-1]["probs"][-1]``; mmrm serves that route, :mod:`mmrm.serve.compat.vllm_classify`, tested
with verl's exact request, for a setup that puts mmrm behind that address itself.) That text carries
no pixels either. The working alternative is :class:`~mmrm.rl.verl_manager.MmrmRewardManager` (or
the functions above), with ``reward.reward_model.enable`` left off.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from mmrm.rl.reward_fn import RewardBatch, RewardFn, RewardUnavailable, media_source
from mmrm.rl.shaping import Shaping

__all__ = [
    "VERL_COMMIT",
    "VERL_RELEASE",
    "VerlReward",
    "compute_score",
    "compute_score_async",
    "compute_score_batch",
    "extra_info",
    "from_reward_kwargs",
]

log = logging.getLogger("mmrm.reward")

#: The volcengine/verl commit whose call signatures this adapter was first matched against.
VERL_COMMIT = "b178a3cd56f58b2d502255daba591e92833930a7"
#: The verl release whose reward loop this adapter was checked against (tests/test_verl_manager.py).
VERL_RELEASE = "0.9.1"
PROMPT_KEY = "mmrm_prompt"
IMAGES_KEY = "mmrm_images"


def extra_info(prompt: Any, images: Sequence[Any] | Any = None, **rest: Any) -> dict[str, Any]:
    """The ``extra_info`` dict of one verl dataset row, carrying mmrm's prompt and images.

    ``rest`` keeps verl's own keys (``split``, ``index``, ...). Images become source strings
    (PIL images and bytes become data URIs), which parquet stores as plain strings.

    >>> extra_info("What digit is this?", ["data:image/png;base64,iVBO"], split="train", index=3)
    {'split': 'train', 'index': 3, 'mmrm_prompt': 'What digit is this?', 'mmrm_images': ['data:image/png;base64,iVBO']}
    """
    imgs = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    return {**rest, PROMPT_KEY: prompt, IMAGES_KEY: [media_source(i) for i in imgs]}


def _get(info: Any, key: str) -> Any:
    return info.get(key) if isinstance(info, Mapping) else None


class VerlReward:
    """verl ``compute_score`` functions (sync, async, batched) around a :class:`~mmrm.rl.reward_fn.RewardFn`.

    Args:
        reward: the reward callable (in-process or remote).
        on_invalid: ``"raise"`` (default) or ``"fallback"`` (see the module doc).
        fallback: the score of a failed sample; required with ``on_invalid="fallback"``.
        return_dict: return ``{"score", "mmrm_invalid"}`` (default) instead of a bare float.

    In a file named by ``custom_reward_function.path``::

        _reward = VerlReward(RewardFn.remote("http://rm:8000", model="rm"), on_invalid="fallback", fallback=0.0)
        compute_score = _reward.compute_score_async
    """

    def __init__(self, reward: RewardFn, *, on_invalid: Literal["raise", "fallback"] = "raise",
                 fallback: float | None = None, return_dict: bool = True) -> None:
        if on_invalid not in ("raise", "fallback"):
            raise ValueError(f"on_invalid must be 'raise' or 'fallback', got {on_invalid!r}")
        if on_invalid == "fallback" and (fallback is None or not math.isfinite(fallback)):
            raise ValueError("on_invalid='fallback' needs a finite number: pass fallback=<the score of a failed sample>")
        if on_invalid == "raise" and fallback is not None:
            raise ValueError("fallback= is used only with on_invalid='fallback'")
        self.reward = reward
        self.on_invalid = on_invalid
        self.fallback = None if fallback is None else float(fallback)
        self.return_dict = return_dict

    # ---- inputs
    @staticmethod
    def _inputs(solution_strs: Sequence[str], ground_truths: Sequence[Any], extra_infos: Sequence[Any]) -> dict[str, Any]:
        prompts, images = [], []
        for info in extra_infos:
            p = _get(info, PROMPT_KEY)
            prompts.append(p if p is not None else _get(info, "question"))
            imgs = _get(info, IMAGES_KEY)
            images.append(imgs if imgs is not None else _get(info, "images"))
        return {"prompts": prompts, "completions": list(solution_strs), "images": images,
                "references": list(ground_truths)}

    def settle(self, batch: RewardBatch, prompts: Sequence[Any] | None = None) -> list[tuple[float, float]]:
        """``(score, invalid flag)`` per sample under this policy: a failed sample raises
        :class:`~mmrm.rl.reward_fn.RewardUnavailable` (``on_invalid="raise"``) or gets the fallback,
        logged and counted, with flag 1.0 (``"fallback"``)."""
        out: list[tuple[float, float]] = []
        for i, r in enumerate(batch.rewards):
            if r is None:
                reason = batch.errors[i] or "no reward"
                if prompts is not None and prompts[i] is None:
                    reason = (f"invalid_input: extra_info has no {PROMPT_KEY!r} (nor 'question'): verl passes the "
                              "response only, so the prompt must ride in extra_info (see mmrm.rl.verl.extra_info)")
                if self.on_invalid == "raise":
                    raise RewardUnavailable(f"mmrm reward {self.reward.name}: sample {i} has no reward ({reason}); set "
                                            "on_invalid='fallback' with a fallback score to train through failures")
                kind = batch.results[i].error_kind or "error"
                self.reward.stats.add_fallback(kind)
                log.warning("mmrm reward %s: sample %d gets the fallback %s (%s); %d fallbacks so far",
                            self.reward.name, i, self.fallback, reason, self.reward.stats.fallbacks)
                out.append((self.fallback, 1.0))  # type: ignore[arg-type]
            else:
                out.append((r, 0.0))
        return out

    def _outputs(self, batch: RewardBatch, prompts: Sequence[Any]) -> list[Any]:
        return [{"score": score, "mmrm_invalid": bad} if self.return_dict else score
                for score, bad in self.settle(batch, prompts)]

    # ---- verl's three call shapes
    def compute_score(self, data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                      extra_info: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """verl's per-sample ``compute_score(data_source, solution_str, ground_truth, extra_info)``."""
        inputs = self._inputs([solution_str], [ground_truth], [extra_info])
        return self._outputs(self.reward.score_inputs(**inputs), inputs["prompts"])[0]

    async def compute_score_async(self, data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                                  extra_info: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """The same, as a coroutine (verl's reward loop gathers these; the service batches them)."""
        inputs = self._inputs([solution_str], [ground_truth], [extra_info])
        return self._outputs(await self.reward.ascore_inputs(**inputs), inputs["prompts"])[0]

    def compute_score_batch(self, data_sources: Sequence[Any] = (), solution_strs: Sequence[str] = (),
                            ground_truths: Sequence[Any] = (), extra_infos: Sequence[Any] = (), **kwargs: Any) -> list[Any]:
        """Lists in, a list out (one scoring call). verl 0.9.1 has no caller for it: its reward loop
        registers no ``batch`` manager."""
        n = len(solution_strs)
        infos = list(extra_infos) if len(extra_infos) else [{}] * n
        gts = list(ground_truths) if len(ground_truths) else [None] * n
        inputs = self._inputs(solution_strs, gts, infos)
        return self._outputs(self.reward.score_inputs(**inputs), inputs["prompts"])


# --------------------------------------------------------------------------------------------------
# Zero-code functions: settings come from custom_reward_function.reward_kwargs (mmrm_* keys).

_CACHE: dict[tuple[Any, ...], VerlReward] = {}
_CACHE_LOCK = threading.Lock()


def from_reward_kwargs(kw: dict[str, Any]) -> VerlReward:
    """The :class:`VerlReward` that ``mmrm_*`` keys of verl's ``reward_kwargs`` describe (one per
    distinct setting in a process, so a worker's calls share one client); the keys are removed from
    ``kw``. Unknown ``mmrm_*`` keys raise, naming the known ones."""
    opts = {k: kw.pop(k) for k in list(kw) if k.startswith("mmrm_")}
    key = tuple(sorted((k, repr(v)) for k, v in opts.items()))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        known = {"mmrm_url", "mmrm_model", "mmrm_judge", "mmrm_rubric", "mmrm_checkpoint", "mmrm_on_invalid",
                 "mmrm_fallback", "mmrm_hybrid", "mmrm_timeout", "mmrm_return_dict"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"unknown reward_kwargs {unknown}; known: {sorted(known)}")
        shaping = Shaping(hybrid=bool(opts.get("mmrm_hybrid", False)))
        if opts.get("mmrm_checkpoint"):
            fn = RewardFn.from_checkpoint(opts["mmrm_checkpoint"], shaping=shaping)
        else:
            client_kw = {"timeout": float(opts["mmrm_timeout"])} if opts.get("mmrm_timeout") else {}
            fn = RewardFn.remote(opts.get("mmrm_url"), model=opts.get("mmrm_model"), judge=opts.get("mmrm_judge"),
                                 rubric=opts.get("mmrm_rubric"), shaping=shaping, **client_kw)
        fb = opts.get("mmrm_fallback")
        vr = VerlReward(fn, on_invalid=opts.get("mmrm_on_invalid", "raise"),
                        fallback=None if fb is None else float(fb), return_dict=bool(opts.get("mmrm_return_dict", True)))
        _CACHE[key] = vr
        return vr


def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                  extra_info: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """verl ``compute_score`` configured by ``reward_kwargs`` (``mmrm_url``, ``mmrm_model``, ...)."""
    return from_reward_kwargs(kwargs).compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)


async def compute_score_async(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                              extra_info: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """The async variant of :func:`compute_score` (verl awaits ``async def`` reward functions)."""
    return await from_reward_kwargs(kwargs).compute_score_async(data_source, solution_str, ground_truth, extra_info, **kwargs)


def compute_score_batch(data_sources: Sequence[Any] = (), solution_strs: Sequence[str] = (),
                        ground_truths: Sequence[Any] = (), extra_infos: Sequence[Any] = (), **kwargs: Any) -> list[Any]:
    """Lists in, a list out, configured by ``reward_kwargs``; verl 0.9.1 never calls it (no ``batch`` manager)."""
    return from_reward_kwargs(kwargs).compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **kwargs)
