"""RewardModel: the scoring API of a reward model, over an engine that runs its backbone.

>>> rm = RewardModel.from_pretrained("runs/digits-rm")           # doctest: +SKIP
>>> rm.score([Sample(prompt="Which digit?", response="The digit is 3.")])[0].value  # doctest: +SKIP
0.41...
>>> rm.rewards([Sample(prompt="Which digit?", response="The digit is 3.")])  # doctest: +SKIP
[0.41...]
>>> fast = RewardModel.from_pretrained("runs/digits-rm", options=ScoringOptions(max_batch_size=64))  # doctest: +SKIP
>>> served = RewardModel.from_pretrained("runs/digits-rm", engine="vllm",  # doctest: +SKIP
...     vllm=VLLMServer(base_url="http://127.0.0.1:8001/v1", served_model="digits"))

The parts live in their own modules: loading (:mod:`mmrm.rm.loading`), the options
(:mod:`mmrm.rm.options`), batch planning (:mod:`mmrm.rm.batching`), the vision feature cache
(:mod:`mmrm.rm.vision_cache`), the shared-prefix path (:mod:`mmrm.rm.prefix`) and the engines
(:mod:`mmrm.rm.engines`: ``hf`` in process, ``vllm`` on a vLLM server).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmrm.rm import checkpoint as ckpt
from mmrm.rm import layouts, loading
from mmrm.rm.encode import Encoded, Encoder
from mmrm.rm.engines.base import Chunk, Engine
from mmrm.rm.engines.hf import HFEngine
from mmrm.rm.errors import ConfigError, InputTooLong, MmrmError
from mmrm.rm.heads import HeadType, RewardHead
from mmrm.rm.media import MediaLoader
from mmrm.rm.options import ScoringOptions, VLLMServer
from mmrm.rm.results import pair_result
from mmrm.rm.scorer import GroupResult, Groups, Pairs, References, Samples
from mmrm.rm.types import ImagePart, Message, Provenance, Sample, ScoreResult

__all__ = ["RewardModel", "ScoringOptions", "VLLMServer"]

log = logging.getLogger(__name__)

#: what :meth:`RewardModel.rewards_of` gives per sample: a reward, or why there is none.
Reward = float | MmrmError | RuntimeError


class RewardModel(nn.Module):
    """A reward model: a backbone run by an :class:`~mmrm.rm.engines.base.Engine` plus a reward
    ``head`` (float32 by default), one scalar per conversation, pooled at the last real token.

    Build one with :meth:`from_pretrained` (a checkpoint directory, either engine) or
    :meth:`from_backbone` (a new head on a transformers model, for training). Save with
    :meth:`save_pretrained`.

    Scoring is the :class:`~mmrm.rm.scorer.Scorer` contract: :meth:`score` (samples), :meth:`compare`
    (pairs) and :meth:`rank` (groups) return results per item; :meth:`rewards` and
    :meth:`probabilities` are float helpers that raise an item's typed error instead. Every engine
    scores the same: this class encodes the samples, the engine returns their last-token states,
    and the head runs here, once per forward.

    :attr:`options` is the model's :class:`~mmrm.rm.options.ScoringOptions`; batching knobs
    (``max_batch_size``, ``max_batch_tokens``, ``packing``, ``pack_tokens``) changed on it apply
    from the next call.
    """

    def __init__(
        self,
        engine: Engine,
        head: RewardHead,
        config: ckpt.CheckpointConfig,
        *,
        options: ScoringOptions | None = None,
        name: str = "reward-model",
        fingerprint: str = "unsaved",
    ) -> None:
        super().__init__()
        self.engine = engine
        self.head = head
        self.config = config
        self.options = options or ScoringOptions()
        self.name = name
        self.fingerprint = fingerprint
        tok = self.encoder.tokenizer
        self.pool_token_id = tok.convert_tokens_to_ids(config.pool_token)
        if self.pool_token_id is None or self.pool_token_id == tok.unk_token_id:
            raise ConfigError(f"pool token {config.pool_token!r} is not in the tokenizer", field="pool_token")

    # The backbone belongs to the hf engine (an nn.Module child of this model, so it moves, trains
    # and saves with it); assigning ``backbone`` (training wraps it with LoRA) replaces the
    # engine's, so there is never a second copy.
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "backbone":
            self._hf("replacing the backbone").backbone = value
        else:
            super().__setattr__(name, value)

    @property
    def backbone(self) -> nn.Module | None:
        """The transformers backbone (hf engine); None on the vllm engine (the server holds it)."""
        return getattr(self.engine, "backbone", None)

    # ---------------------------------------------------------------------------------------- build
    @classmethod
    def from_backbone(
        cls,
        path: str | Path,
        *,
        head_type: HeadType = "mlp2",
        inner_size: int | None = None,
        seed: int = 0,
        options: ScoringOptions | None = None,
        **overrides: Any,
    ) -> "RewardModel":
        """A new reward model: the transformers checkpoint at ``path`` plus a freshly initialized
        head (seeded by ``seed``), on the hf engine. ``options`` / ``overrides`` are
        :class:`~mmrm.rm.options.ScoringOptions` (its ``max_length`` / ``truncation`` become the
        model's config: 4096 / refuse unless set)."""
        path = Path(path)
        opts = _options(options, overrides)
        if opts.engine != "hf":
            raise ConfigError("a new head is trained on the hf engine; load the saved checkpoint with engine: vllm",
                              field="engine")
        model = loading.load_backbone(path, dtype=opts.dtype)
        processor = loading.load_processor(path)
        hidden = loading.hidden_size(model)
        head = loading.seeded_head(hidden, head_type, inner_size, seed).to(loading.DTYPES[opts.head_dtype])
        cfg = loading.with_length_policy(ckpt.CheckpointConfig(
            head=ckpt.HeadConfig(type=head_type, hidden_size=hidden, inner_size=head.inner_size),
            pool_token=loading.pool_token(Encoder(processor)),
        ), opts)
        rm = cls(HFEngine(model, _encoder(processor, cfg, opts), opts), head, cfg, options=opts, name=path.name)
        return rm.to(loading.resolve_device(opts.device))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        options: ScoringOptions | None = None,
        name: str | None = None,
        **overrides: Any,
    ) -> "RewardModel":
        """Load a checkpoint directory: mmrm's own, or a published reward model's layout (TRL /
        LLaMA-Factory value head incl. Skywork-VL-Reward, DocReward, OpenRLHF, one-label
        ``*ForSequenceClassification``), detected from its files (:mod:`mmrm.rm.layouts`; the
        ``layout`` option forces one) and scored as its authors' code scores it.

        ``options`` (:class:`~mmrm.rm.options.ScoringOptions`) say how it loads and scores; keyword
        ``overrides`` set single fields of it (``device="cpu"``, ``max_length=2048``,
        ``engine="vllm", vllm=VLLMServer(...)``; an unknown keyword is a validation error).
        ``name`` is the scorer name in provenance (default: the directory's name).

        The ``hf`` engine loads the backbone here; the ``vllm`` engine needs merged weights served
        by a vLLM pooling server (``mmrm vllm-view``) and loads only the tokenizer, the config and
        the head. Where the server's ``max_model_len`` is below ``max_length``, the server's is used.
        """
        path = Path(path)
        opts = _options(options, overrides)
        name = name or path.name
        if opts.engine == "vllm":
            return cls._on_vllm(path, opts, name)
        plan = layouts.detect(path, opts.layout)
        if plan.layout == "mmrm":
            cfg = ckpt.read_config(path)
            assert cfg is not None  # the mmrm layout is detected by its config file
            model = loading.load_backbone(path, dtype=opts.dtype)
            if cfg.lora == "adapter":
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(path / ckpt.ADAPTER_DIR))
            head = loading.load_head(path, cfg, opts.head_dtype)
            processor = loading.load_processor(path)
        else:
            # the head and the tokenizer are checked before the (large) backbone is read
            head = loading.load_plan_head(path, plan, opts.head_dtype)
            processor = loading.load_processor(path)
            cfg = loading.plan_config(plan, processor)
            model = loading.load_backbone(path, dtype=opts.dtype, base=plan.loader == "base")
        cfg = loading.with_length_policy(cfg, opts)
        engine = HFEngine(model, _encoder(processor, cfg, opts), opts)
        rm = cls(engine, head, cfg, options=opts, name=name, fingerprint=ckpt.fingerprint(path))
        rm = rm.to(loading.resolve_device(opts.device)).eval()
        if opts.compile:
            from mmrm.rm.regional_compile import compile_regions

            compile_regions(loading.base_model(model))
        return rm

    @classmethod
    def _on_vllm(cls, path: Path, opts: ScoringOptions, name: str) -> "RewardModel":
        from mmrm.rm.engines.vllm import VLLMEngine, merged_config

        assert opts.vllm is not None  # ScoringOptions requires it with engine: vllm
        cfg = loading.with_length_policy(merged_config(path), opts)
        processor = loading.load_processor(path)
        head = loading.load_head(path, cfg, opts.head_dtype)
        engine = VLLMEngine(_encoder(processor, cfg, opts), opts.vllm, opts, state_dtype=loading.DTYPES[opts.head_dtype])
        rm = cls(engine, head, cfg, options=opts, name=name, fingerprint=ckpt.fingerprint(path))
        served = engine.server_max_len()
        if served is not None and served < cfg.max_length:
            # Longer samples would be refused by the server as a whole batch: refuse (or truncate)
            # them here instead, one by one, naming the limit.
            log.warning("vllm engine: the server's max_model_len %d is below the checkpoint's max_length %d; using %d",
                        served, cfg.max_length, served)
            rm.config = cfg.model_copy(update={"max_length": served})
            engine.encoder.max_length = served
        return rm

    def save_pretrained(self, path: str | Path, *, merge_lora: bool = True) -> Path:
        """Write a self-contained checkpoint directory (see :mod:`mmrm.rm.checkpoint`; hf engine)."""
        from safetensors.torch import save_file

        backbone = self._hf("saving a checkpoint").backbone
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lora = loading.save_backbone(backbone, path, merge_lora=merge_lora)
        self.processor.save_pretrained(str(path))
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(path / ckpt.HEAD_NAME))
        ckpt.write_config(path, self.config.model_copy(update={"lora": lora, "source": "mmrm"}))
        self.fingerprint = ckpt.fingerprint(path)
        return path

    def close(self) -> None:
        """Release what the engine holds open (the vllm engine's connections)."""
        self.engine.close()

    # ------------------------------------------------------------------------------------ properties
    @property
    def encoder(self) -> Encoder:
        """The encoder every sample goes through (the engine's)."""
        return self.engine.encoder

    @property
    def processor(self) -> Any:
        """The checkpoint's processor (VLM) or tokenizer (text model)."""
        return self.encoder.processor

    @property
    def device(self) -> torch.device:
        """Where the head runs (with the backbone, on the hf engine)."""
        return next(self.head.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's compute dtype (hf engine); the head's on the vllm engine."""
        return getattr(self.engine, "dtype", None) or next(self.head.parameters()).dtype

    @property
    def forward_calls(self) -> int:
        """Backbone forward passes (vllm: server requests) run so far."""
        return self.engine.forward_calls

    @property
    def provenance(self) -> Provenance:
        return Provenance(scorer=self.name, kind="reward_model", fingerprint=self.fingerprint,
                          engine=self.engine.name, dtype=self.engine.provenance_dtype)

    def _hf(self, what: str) -> HFEngine:
        if not isinstance(self.engine, HFEngine):
            raise ConfigError(f"{what} needs the hf engine (this model runs on {self.engine.name})", field="engine")
        return self.engine

    # -------------------------------------------------------------------------------------- compute
    def encode(self, sample: Sample) -> Encoded:
        """Encode one sample; the sequence ends exactly at the pooled token. Raises the typed error
        (naming the sample's field) of a sample that cannot be scored on this model's engine."""
        messages = sample.messages
        if self.config.turn_per_image:
            messages = [*sample.prompt, *_turn_per_image(sample.response)]
        suffix = 0
        strip, tail = self.config.strip_end, self.config.suffix
        if self.encoder.truncation == "left":
            full = self.encoder.render(messages, strip_end=strip) + tail
            prefix = self.encoder.render(sample.prompt, add_generation_prompt=True)
            if full.startswith(prefix):
                suffix = len(self.encoder.tokenizer(full[len(prefix):], add_special_tokens=False)["input_ids"])
        try:
            enc = self.encoder.encode(messages, strip_end=strip, suffix=tail, protected_suffix=suffix)
        except MmrmError as e:
            raise _sample_field(e, len(sample.prompt))
        if int(enc.input_ids[-1]) != self.pool_token_id:
            # Never pool a token other than the one the head was trained on.
            raise InputTooLong(
                f"the encoded sample does not end with the pooled token {self.config.pool_token!r}",
                field="response",
            )
        return self.engine.check(sample, enc)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards [batch] for a collated batch (one backbone forward pass; the training forward)."""
        return self.head(self._hf("a forward on a collated batch").pooled(batch))

    @torch.no_grad()
    def rewards_of(self, encoded: Sequence[Encoded]) -> list[Reward]:
        """Rewards of encoded samples, batched by the engine; a forward that fails makes its
        samples' results that error (nothing is raised)."""
        return self._heads(self.engine.last_hidden(encoded), len(encoded))

    @torch.no_grad()
    def rewards_of_group(self, encoded: Sequence[Encoded]) -> list[Reward]:
        """Rewards of encoded samples that share a prompt (a GRPO group, both sides of a pair): the
        hf engine runs the shared prompt once (:mod:`mmrm.rm.prefix`), the vllm engine sends them
        together for the server's prefix cache; the rewards equal :meth:`rewards_of`'s up to float
        rounding."""
        return self._heads(self.engine.group_last_hidden(encoded), len(encoded))

    def _heads(self, chunks: list[Chunk], n: int) -> list[Reward]:
        """The head over each forward's states, once per forward; failures stay their samples'."""
        out: list[Reward] = [RuntimeError("no result")] * n
        for idx, states in chunks:
            values: list[Reward]
            if isinstance(states, torch.Tensor):
                try:
                    values = self.head(states).float().cpu().tolist()
                except RuntimeError as e:
                    log.warning("reward head failed for %d items: %s", len(idx), e)
                    values = [e] * len(idx)
            else:
                values = [states] * len(idx)
            for i, v in zip(idx, values):
                out[i] = v
        return out

    # ---------------------------------------------------------------------------------------- scoring
    # The Scorer operations (mmrm.rm.scorer): one result per item, a failed item is its own
    # invalid result and the others score in the same forwards.

    def _encode_all(self, samples: Sequence[Sample]) -> list[Encoded | MmrmError]:
        out: list[Encoded | MmrmError] = []
        for s in samples:
            try:
                out.append(self.encode(s))
            except MmrmError as e:
                out.append(e)
        return out

    def _results(self, encoded: Sequence[Encoded | MmrmError], *, group: bool = False) -> list[ScoreResult]:
        """Results of encoded samples (errors stay theirs); ``group``: the shared-prefix path."""
        prov = self.provenance
        ok = [i for i, e in enumerate(encoded) if isinstance(e, Encoded)]
        run = self.rewards_of_group if group else self.rewards_of
        values: list[Any] = list(encoded)
        if ok:
            for i, v in zip(ok, run([encoded[i] for i in ok])):  # type: ignore[misc]
                values[i] = v
        return [ScoreResult(value=v, provenance=prov) if isinstance(v, float) else ScoreResult.failed(v, prov)
                for v in values]

    def score(self, samples: Samples, *, references: References = None) -> list[ScoreResult]:
        """One reward per sample, as a :class:`ScoreResult`, in order.

        A sample that cannot be scored (media refused or broken, too long, a modality the backbone
        or engine does not take, placeholder tokens or invalid Unicode in its text) is that
        sample's invalid result naming the field and the limit; the others score in the same
        batched forwards, with the rewards they have alone. ``references`` are accepted and ignored
        (a reward model reads none), so every :class:`~mmrm.rm.scorer.Scorer` is called the same way.
        """
        return self._results(self._encode_all(samples))

    def compare(self, pairs: Pairs, *, references: References = None) -> list[ScoreResult]:
        """P(A > B) = sigmoid(r_A - r_B) per pair (``value`` and ``prob_a_wins``; the two rewards in
        ``details``); both sides of every pair go through one batched pass. A pair with a failed
        side is invalid, naming the side."""
        res = self.score([s for p in pairs for s in p.samples()])
        return [pair_result(res[2 * k], res[2 * k + 1]) for k in range(len(pairs))]

    def rank(self, groups: Groups, *, references: References = None, eps: float = 1e-6) -> list[GroupResult]:
        """Raw and group-normalized rewards of each group (GRPO), one :class:`GroupResult` per group.

        A group's shared prompt (and its images) runs through the backbone ONCE on the hf engine;
        its responses then run as one batch on top of the cached keys and values
        (:meth:`rewards_of_group`), with the rewards the plain per-sample path gives up to float
        rounding. A response that cannot be scored is invalid and left out of its group's
        normalization.
        """
        return [GroupResult.of(self._results(self._encode_all(g.samples()), group=True), eps=eps) for g in groups]

    def rewards(self, samples: Samples) -> list[float]:
        """Float helper: the rewards of :meth:`score`; raises the typed error of the first sample
        that cannot be scored."""
        return [r.raise_for_invalid() for r in self.score(samples)]

    def probabilities(self, pairs: Pairs) -> list[float]:
        """Float helper: P(A > B) of :meth:`compare`; raises the typed error of the first pair that
        cannot be scored."""
        return [r.raise_for_invalid() for r in self.compare(pairs)]


def _options(options: ScoringOptions | None, overrides: dict[str, Any]) -> ScoringOptions:
    """``options`` with keyword ``overrides`` of its fields, validated (unknown names are errors)."""
    base = options or ScoringOptions()
    if not overrides:
        return base.model_copy(deep=True)  # the model's own: live changes never reach the caller's
    try:
        return ScoringOptions.model_validate({**dict(base), **overrides})
    except ValueError as e:
        raise ConfigError(f"invalid scoring options: {e}", field="options") from e


def _encoder(processor: Any, cfg: ckpt.CheckpointConfig, opts: ScoringOptions) -> Encoder:
    return Encoder(processor, media=MediaLoader(opts.media_policy), max_length=cfg.max_length, truncation=cfg.truncation)


def _turn_per_image(response: Message) -> list[Message]:
    """A response made only of images as one assistant turn per image (DocReward's pages)."""
    parts = response.parts
    if not parts or not all(isinstance(p, ImagePart) for p in parts):
        return [response]
    return [Message(role="assistant", content=[p]) for p in parts]


def _sample_field(e: MmrmError, n_prompt: int) -> MmrmError:
    """Rename the encoder's ``messages[k]`` field to the Sample's own ``prompt[k]`` / ``response``."""
    if e.field:
        m = re.match(r"messages\[(\d+)\](.*)", e.field)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            e.field = f"prompt[{k}]{rest}" if k < n_prompt else f"response{rest}"
    return e
