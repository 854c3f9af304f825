"""RewardModel: a transformers backbone plus a reward head, pooled at the last real token.

>>> rm = RewardModel.from_pretrained("runs/digits-rm")           # doctest: +SKIP
>>> rm.score([Sample(prompt="Which digit?", response="The digit is 3.")])[0].value  # doctest: +SKIP
0.41...
>>> rm.rewards([Sample(prompt="Which digit?", response="The digit is 3.")])  # doctest: +SKIP
[0.41...]
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn
from mmrm.rm import checkpoint as ckpt
from mmrm.rm import packing
from mmrm.rm.encode import _SEQUENCE_KEYS, Encoded, Encoder, collate
from mmrm.rm.errors import ConfigError, InputTooLong, MmrmError
from mmrm.rm.heads import HeadType, RewardHead, pool_last_token
from mmrm.rm.media import MediaLoader, MediaPolicy
from mmrm.rm.results import pair_result
from mmrm.rm.scorer import GroupResult, Groups, Pairs, References, Samples
from mmrm.rm.types import Message, Provenance, Sample, ScoreResult

log = logging.getLogger(__name__)

DType = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_backbone(path: Path, *, dtype: torch.dtype, sequence_classification: bool) -> tuple[nn.Module, Any, bool]:
    import transformers as tf

    arch, vision = ckpt.backbone_architecture(path)
    kw: dict[str, Any] = {"dtype": dtype}
    if sequence_classification:
        model = tf.AutoModelForSequenceClassification.from_pretrained(str(path), **kw)
    elif vision:
        model = tf.AutoModelForImageTextToText.from_pretrained(str(path), **kw)
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(str(path), **kw)
    return model, load_processor(path), vision


def load_processor(path: Path) -> Any:
    """A checkpoint's processor (VLM) or tokenizer (text model)."""
    import transformers as tf

    _, vision = ckpt.backbone_architecture(path)
    return tf.AutoProcessor.from_pretrained(str(path)) if vision else tf.AutoTokenizer.from_pretrained(str(path))


def load_head(path: Path, cfg: ckpt.CheckpointConfig, dtype: DType = "float32") -> RewardHead:
    """An mmrm checkpoint's reward head, in ``dtype``."""
    from safetensors.torch import load_file

    head = RewardHead(cfg.head.hidden_size, cfg.head.type, cfg.head.inner_size)
    head.load_state_dict(load_file(str(path / ckpt.HEAD_NAME)))
    return head.to(_DTYPES[dtype])


def base_model(model: nn.Module) -> nn.Module:
    """The transformer body (vision tower + decoder) of a causal-LM / VLM / seq-cls model, no LM head."""
    try:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            model = model.get_base_model()
    except ImportError:  # peft is optional at inference
        pass
    return getattr(model, model.base_model_prefix)


class RewardModel(nn.Module):
    """A reward model: ``backbone`` (transformers) + ``head`` (float32), one scalar per conversation.

    Scores are batch-invariant: every sample is encoded alone, batches are right-padded, and the
    pooled token is the last real token of each row, so a sample's reward does not depend on what
    else shares its batch.

    Build one with :meth:`from_pretrained` (a checkpoint directory) or :meth:`from_backbone` (a new
    head on a transformers model, for training). Save with :meth:`save_pretrained`.

    Scoring is the :class:`~mmrm.rm.scorer.Scorer` contract: :meth:`score` (samples), :meth:`compare`
    (pairs) and :meth:`rank` (groups) return results per item; :meth:`rewards` and
    :meth:`probabilities` are float helpers that raise an item's typed error instead.
    """

    def __init__(
        self,
        backbone: nn.Module,
        processor: Any,
        head: RewardHead,
        config: ckpt.CheckpointConfig,
        *,
        media: MediaLoader | None = None,
        name: str = "reward-model",
        fingerprint: str = "unsaved",
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.processor = processor
        self.config = config
        self.name = name
        self.fingerprint = fingerprint
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.encoder = Encoder(processor, media=media, max_length=config.max_length, truncation=config.truncation)
        tok = self.encoder.tokenizer
        self.pool_token_id = tok.convert_tokens_to_ids(config.pool_token)
        if self.pool_token_id is None or self.pool_token_id == tok.unk_token_id:
            raise ConfigError(f"pool token {config.pool_token!r} is not in the tokenizer", field="pool_token")
        #: number of backbone forward passes run so far (tests count them; metrics may too).
        self.forward_calls = 0
        #: image features by content hash (inference only; bounded, least recently used first out).
        self.vision_cache = FeatureCache(self.vision_cache_bytes)
        self._weights_version = -1
        self._packable: bool | None = None  # decided on the first packed forward

    # ---------------------------------------------------------------------------------------- build
    @classmethod
    def from_backbone(
        cls,
        path: str | Path,
        *,
        head_type: HeadType = "mlp2",
        inner_size: int | None = None,
        seed: int = 0,
        dtype: DType = "float32",
        device: str = "cpu",
        max_length: int = 4096,
        truncation: Literal["refuse", "left"] = "refuse",
        media_policy: MediaPolicy | None = None,
    ) -> "RewardModel":
        """A new reward model: the transformers checkpoint at ``path`` plus a freshly initialized head."""
        path = Path(path)
        model, processor, _ = _load_backbone(path, dtype=_DTYPES[dtype], sequence_classification=False)
        hidden = _hidden_size(model)
        g = torch.Generator().manual_seed(seed)
        head = RewardHead(hidden, head_type, inner_size)
        with torch.no_grad():
            for p in head.parameters():  # seeded init so a run is reproducible from its seed alone
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p.shape[1])))
                else:
                    p.zero_()
        enc = Encoder(processor)
        pool_token = _pool_token(enc)
        cfg = ckpt.CheckpointConfig(
            head=ckpt.HeadConfig(type=head_type, hidden_size=hidden, inner_size=head.inner_size),
            pool_token=pool_token,
            max_length=max_length,
            truncation=truncation,
        )
        rm = cls(model, processor, head, cfg, media=MediaLoader(media_policy), name=path.name)
        return rm.to(resolve_device(device))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: DType = "float32",
        device: str = "auto",
        head_dtype: DType = "float32",
        max_length: int | None = None,
        truncation: Literal["refuse", "left"] | None = None,
        media_policy: MediaPolicy | None = None,
        name: str | None = None,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        pack_sequences: bool | None = None,
        compile: bool = False,
    ) -> "RewardModel":
        """Load a checkpoint directory (mmrm format, or a one-label ``*ForSequenceClassification``).

        ``dtype`` is the backbone's compute dtype; the head stays ``head_dtype`` (float32 default).
        ``max_length`` / ``truncation`` override the checkpoint's values. ``pack_sequences`` sets
        :attr:`pack_sequences` (None: on a CPU); ``compile`` compiles the decoder's MLP and norm
        blocks (:mod:`mmrm.rm.regional_compile`; slower start-up, faster CPU forwards).
        """
        path = Path(path)
        cfg = ckpt.read_config(path)
        arch, _ = ckpt.backbone_architecture(path)
        if cfg is None:
            if not arch.endswith("ForSequenceClassification"):
                raise ConfigError(
                    f"{path} has neither {ckpt.CONFIG_NAME} nor a *ForSequenceClassification backbone; "
                    "train a head with `mmrm train` or pass a reward checkpoint",
                    field="checkpoint",
                )
            rm = cls._from_sequence_classification(
                path, dtype=dtype, device=device, head_dtype=head_dtype, max_length=max_length,
                truncation=truncation, media_policy=media_policy, name=name,
                max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
            )
        else:
            model, processor, _ = _load_backbone(path, dtype=_DTYPES[dtype], sequence_classification=False)
            if cfg.lora == "adapter":
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(path / ckpt.ADAPTER_DIR))
            updates = {k: v for k, v in (("max_length", max_length), ("truncation", truncation)) if v is not None}
            rm = cls(
                model, processor, load_head(path, cfg, head_dtype), cfg.model_copy(update=updates),
                media=MediaLoader(media_policy), name=name or path.name, fingerprint=ckpt.fingerprint(path),
                max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
            ).to(resolve_device(device)).eval()
        rm.pack_sequences = pack_sequences
        if compile:
            from mmrm.rm.regional_compile import compile_regions

            compile_regions(base_model(rm.backbone))
        return rm

    @classmethod
    def _from_sequence_classification(cls, path: Path, *, dtype: DType, device: str, head_dtype: DType,
                                      max_length: int | None, truncation: Any, media_policy: MediaPolicy | None,
                                      name: str | None, max_batch_size: int, max_batch_tokens: int) -> "RewardModel":
        model, processor, _ = _load_backbone(path, dtype=_DTYPES[dtype], sequence_classification=True)
        if model.config.num_labels != 1:
            raise ConfigError(
                f"a sequence-classification reward model must have one label, this one has {model.config.num_labels}",
                field="num_labels", limit=1,
            )
        score: nn.Linear = model.score
        hidden = score.in_features
        head = RewardHead(hidden, "linear")
        with torch.no_grad():
            head.net.weight.copy_(score.weight.float())
            head.net.bias.copy_(score.bias.float() if score.bias is not None else torch.zeros(1))
        head.to(_DTYPES[head_dtype])
        cfg = ckpt.CheckpointConfig(
            head=ckpt.HeadConfig(type="linear", hidden_size=hidden),
            pool_token=_pool_token(Encoder(processor)),
            max_length=max_length or 4096,
            truncation=truncation or "refuse",
            source="sequence_classification",
        )
        rm = cls(model, processor, head, cfg, media=MediaLoader(media_policy), name=name or path.name,
                 fingerprint=ckpt.fingerprint(path), max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
        return rm.to(resolve_device(device)).eval()

    def save_pretrained(self, path: str | Path, *, merge_lora: bool = True) -> Path:
        """Write a self-contained checkpoint directory (see :mod:`mmrm.rm.checkpoint`)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = self.backbone
        lora: Literal["merged", "adapter"] | None = None
        try:
            from peft import PeftModel

            if isinstance(model, PeftModel):
                if merge_lora:
                    # merge a copy so this in-memory model keeps training with its adapter
                    import copy

                    copy.deepcopy(model).merge_and_unload().save_pretrained(str(path))
                    lora = "merged"
                else:
                    model.get_base_model().save_pretrained(str(path))  # with the adapter layers stripped below
                    model.save_pretrained(str(path / ckpt.ADAPTER_DIR))
                    lora = "adapter"
        except ImportError:
            pass
        if lora is None:
            model.save_pretrained(str(path))
        if lora == "adapter":
            _strip_lora_from_saved(path)
        self.processor.save_pretrained(str(path))
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(path / ckpt.HEAD_NAME))
        ckpt.write_config(path, self.config.model_copy(update={"lora": lora, "source": "mmrm"}))
        self.fingerprint = ckpt.fingerprint(path)
        return path

    # -------------------------------------------------------------------------------------- compute
    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def provenance(self) -> Provenance:
        return Provenance(
            scorer=self.name, kind="reward_model", fingerprint=self.fingerprint,
            engine="hf", dtype=str(self.dtype).removeprefix("torch."),
        )

    def encode(self, sample: Sample) -> Encoded:
        """Encode one sample; the sequence ends exactly at the pooled token."""
        messages = sample.messages
        suffix = 0
        if self.encoder.truncation == "left":
            full = self.encoder.render(messages, strip_end=True)
            prefix = self.encoder.render(sample.prompt, add_generation_prompt=True)
            if full.startswith(prefix):
                suffix = len(self.encoder.tokenizer(full[len(prefix):], add_special_tokens=False)["input_ids"])
        try:
            enc = self.encoder.encode(messages, strip_end=True, protected_suffix=suffix)
        except MmrmError as e:
            raise _sample_field(e, len(sample.prompt))
        if int(enc.input_ids[-1]) != self.pool_token_id:
            # Never pool a token other than the one the head was trained on.
            raise InputTooLong(
                f"the encoded sample does not end with the pooled token {self.config.pool_token!r}",
                field="response",
            )
        return enc

    #: bound of :attr:`vision_cache` in bytes (0 turns the cache off).
    vision_cache_bytes: int = 256 * 1024 * 1024

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards [batch] for a collated batch (one backbone forward pass)."""
        self.forward_calls += 1
        base = base_model(self.backbone)
        out = base(**self._backbone_inputs(base, batch), use_cache=False)
        pooled = pool_last_token(out.last_hidden_state, batch["attention_mask"].to(out.last_hidden_state.device))
        return self.head(pooled)

    def _backbone_inputs(self, base: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The batch on the device; at inference, images' vision features come from the cache.

        Each image's features are keyed by a hash of its pixels and grid: an image seen before
        (the other side of a pair, a group's shared image, a benchmark image scored by many
        prompts) skips the vision tower, and one image repeated in a batch runs it once.
        Training (grad enabled) always runs the tower.
        """
        dev = self.device
        use_cache = (
            self.vision_cache.max_bytes > 0 and not torch.is_grad_enabled() and not self.backbone.training
            and "pixel_values" in batch and "image_grid_thw" in batch and _accepts(base, "mm_encoder_outputs")
        )
        if not use_cache:
            return {k: v.to(dev) for k, v in batch.items()}
        # Features are only valid for the weights that made them: any in-place change of a
        # parameter (an optimizer step, load_state_dict, a LoRA update) bumps its version counter.
        version = sum(p._version for p in self.backbone.parameters())
        if version != self._weights_version:
            self.vision_cache.clear()
            self._weights_version = version
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pixels, grids = batch["pixel_values"], batch["image_grid_thw"]
        rows = grids.prod(-1).tolist()
        keys, slices, start = [], [], 0
        for g, n in zip(grids, rows):
            sl = pixels[start:start + n]
            start += n
            slices.append(sl)
            keys.append(_content_key(sl, g))
        missing = list(dict.fromkeys(k for k in keys if self.vision_cache.get(k) is None))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            idx = [first[k] for k in missing]
            feats = base.get_image_features(torch.cat([slices[i] for i in idx]).to(dev), grids[idx].to(dev),
                                            return_dict=True).pooler_output
            for k, f in zip(missing, feats):
                self.vision_cache.put(k, f.detach())
        image = [self.vision_cache.get(k, touch=False) for k in keys]
        if any(f is None for f in image):  # evicted while filling (a cache smaller than one batch)
            return {k: v.to(dev) for k, v in batch.items()}
        out: dict[str, Any] = {k: v.to(dev) for k, v in batch.items() if k not in ("pixel_values", "pixel_values_videos")}
        enc: dict[str, Any] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(image))}
        if "pixel_values_videos" in batch:  # videos are not cached, but the model takes both or neither
            enc["video"] = base.get_video_features(batch["pixel_values_videos"].to(dev), out["video_grid_thw"], return_dict=True)
        out["mm_encoder_outputs"] = enc
        return out

    #: a batch with more padded tokens than this is also cut where padding would exceed
    #: :attr:`max_padding_fraction` of it: on compute-bound hardware padding is wasted work,
    #: while small batches (overhead-bound) stay whole.
    padding_check_tokens: int = 4096
    max_padding_fraction: float = 0.2

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches: longest first, capped by items and by padded tokens,
        and (for large batches) by the share of padding."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        real = 0
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]  # sorted: the first is the longest
            padded = width * (len(cur) + 1)
            wasteful = padded > self.padding_check_tokens and padded - real - lengths[i] > self.max_padding_fraction * padded
            if cur and (len(cur) >= self.max_batch_size or padded > self.max_batch_tokens or wasteful):
                batches.append(cur)
                cur = []
                real = 0
            cur.append(i)
            real += lengths[i]
        if cur:
            batches.append(cur)
        return batches

    #: pack text-only samples end to end, one row per forward, no padding (:mod:`mmrm.rm.packing`).
    #: None = on a CPU, where the forward is compute-bound and padding is wasted work; on a GPU a
    #: padded batch is one wide kernel launch and packing buys little.
    pack_sequences: bool | None = None
    #: real tokens per packed forward: a few thousand keeps a CPU's activations in cache.
    pack_tokens: int = 2048

    def _packing(self) -> bool:
        """Whether a forward now packs its text-only samples (inference on a packable backbone)."""
        want = self.pack_sequences if self.pack_sequences is not None else self.device.type == "cpu"
        if not want or torch.is_grad_enabled() or self.backbone.training:
            return False
        if self._packable is None:
            self._packable = packing.enable(base_model(self.backbone))
        return self._packable

    def plan_packs(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into packed rows of at most :attr:`pack_tokens` tokens (a longer sample
        gets a row of its own) and :attr:`max_batch_size` samples, in input order."""
        packs: list[list[int]] = []
        cur: list[int] = []
        tokens = 0
        for i, n in enumerate(lengths):
            if cur and (tokens + n > self.pack_tokens or len(cur) >= self.max_batch_size):
                packs.append(cur)
                cur, tokens = [], 0
            cur.append(i)
            tokens += n
        if cur:
            packs.append(cur)
        return packs

    def forward_packed(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        """Rewards [n] for text-only samples packed into one row (one backbone forward pass)."""
        self.forward_calls += 1
        base = base_model(self.backbone)
        kw = packing.pack([e.input_ids for e in encoded])
        last = kw.pop("last").to(self.device)
        # the sample bounds stay on the CPU: attention reads them as Python ints in every layer
        kw = {k: v.to(self.device) if isinstance(v, torch.Tensor) and k != "cu_seq_lens_q" else v for k, v in kw.items()}
        out = base(**kw, use_cache=False)
        return self.head(out.last_hidden_state[0, last])

    @torch.no_grad()
    def rewards_of(self, encoded: Sequence[Encoded]) -> list[float | MmrmError | RuntimeError]:
        """Rewards for encoded samples, batched (packed where :attr:`pack_sequences` applies); a
        batch that fails is retried item by item."""
        results: list[float | MmrmError | RuntimeError] = [0.0] * len(encoded)
        packed: list[int] = []
        if self._packing():
            packed = [i for i, e in enumerate(encoded) if e.n_images == 0 and e.n_videos == 0]
        padded = sorted(set(range(len(encoded))) - set(packed))
        plans = [([packed[j] for j in p], self.forward_packed) for p in self.plan_packs([encoded[i].length for i in packed])]
        plans += [([padded[j] for j in b], self._forward_padded) for b in self.plan_batches([encoded[i].length for i in padded])]
        for idx, run in plans:
            try:
                r = run([encoded[i] for i in idx]).float().cpu().tolist()
            except RuntimeError as e:
                if len(idx) == 1:
                    log.warning("reward forward failed for one item: %s", e)
                    results[idx[0]] = e
                    continue
                log.warning("batched forward of %d items failed (%s); retrying one by one", len(idx), e)
                r = [self.rewards_of([encoded[i]])[0] for i in idx]
            for i, v in zip(idx, r):
                results[i] = v
        return results

    def _forward_padded(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        return self.forward(collate(list(encoded), self.encoder.pad_id))

    # ------------------------------------------------------------------------------------ scoring
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
        does not take, placeholder tokens or invalid Unicode in its text) is that sample's invalid
        result naming the field and the limit; the others score in the same batched forwards, with
        the rewards they have alone. ``references`` are accepted and ignored (a reward model reads
        none), so every :class:`~mmrm.rm.scorer.Scorer` is called the same way.
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

        A group's shared prompt (and its images) runs through the backbone ONCE; its responses then
        run as one batch on top of the cached keys and values (:meth:`rewards_of_group`), with the
        rewards the plain per-sample path gives up to float rounding. A response that cannot be
        scored is invalid and left out of its group's normalization.
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

    # ------------------------------------------------------------------------- shared-prefix path
    #: a shared prefix shorter than this many tokens is not worth a separate forward pass.
    min_shared_prefix: int = 16

    def shared_prefix_length(self, encoded: Sequence[Encoded]) -> int:
        """Tokens that every encoded sample starts with and that the prefix path may cache, or 0.

        The prefix is the longest common token prefix, cut so that every sample keeps at least
        one token of its own, and only accepted when the samples carry the same media tensors
        and every media token lies inside it (the part after it is plain text).
        """
        if len(encoded) < 2:
            return 0
        first = encoded[0]
        keys = {k for k in first.extras if k not in _SEQUENCE_KEYS}
        for e in encoded[1:]:
            if {k for k in e.extras if k not in _SEQUENCE_KEYS} != keys:
                return 0
            for k in keys:
                a, b = first.extras[k], e.extras[k]
                if a.shape != b.shape or not torch.equal(a, b):
                    return 0
        n = min(e.length for e in encoded) - 1
        ref = first.input_ids[:n]
        for e in encoded[1:]:
            diff = (e.input_ids[:n] != ref).nonzero()
            if len(diff):
                n = int(diff[0, 0])
                ref = ref[:n]
        if n < self.min_shared_prefix:
            return 0
        media = torch.tensor(sorted(self.encoder._media_ids), dtype=first.input_ids.dtype)
        for e in encoded:
            if len(media) and torch.isin(e.input_ids[n:], media).any():
                return 0  # a response with its own image: not plain text after the prefix
        return n

    @torch.no_grad()
    def rewards_of_group(self, encoded: Sequence[Encoded]) -> list[float | MmrmError | RuntimeError]:
        """Rewards of encoded samples that share a prompt (a GRPO group, both sides of a pair).

        The shared prefix (prompt + images, :meth:`shared_prefix_length`) runs once with its keys
        and values cached; the remaining tokens of every sample then run in length-sorted batches
        attending to that cache. Causal attention makes the prefix's states independent of what
        follows, so the rewards equal :meth:`rewards_of`'s up to float rounding. Without a usable
        shared prefix, or if the prefix path fails, this is :meth:`rewards_of`.
        """
        n = self.shared_prefix_length(encoded)
        if n == 0:
            return self.rewards_of(encoded)
        try:
            return self._prefix_rewards(encoded, n)  # type: ignore[return-value]
        except (RuntimeError, ValueError, TypeError) as e:
            log.warning("shared-prefix scoring failed (%s); scoring the samples independently", e)
            return self.rewards_of(encoded)

    def _prefix_rewards(self, encoded: Sequence[Encoded], n: int) -> list[float]:
        from transformers import DynamicCache

        base = base_model(self.backbone)
        cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        first = encoded[0]
        dev = self.device
        pre: dict[str, torch.Tensor] = {"input_ids": first.input_ids[None, :n]}
        for k, v in first.extras.items():
            if k in _SEQUENCE_KEYS:
                if k != "attention_mask":
                    pre[k] = v[None, :n]
            else:
                pre[k] = v
        pre["attention_mask"] = torch.ones((1, n), dtype=torch.long)
        prefix_cache = DynamicCache()
        self.forward_calls += 1
        base(**self._backbone_inputs(base, pre), use_cache=True, **{cache_kw: prefix_cache})
        # Text after the prefix sits at position index + delta; mrope models (Qwen2-VL family)
        # shift it by the rope delta their image grid produces, text models by nothing.
        mrope = hasattr(base, "get_rope_index")
        delta = 0
        has_media = any(k not in _SEQUENCE_KEYS for k in first.extras)
        if mrope and has_media:
            rd = getattr(base, "rope_deltas", None)
            if rd is None:
                raise RuntimeError("the backbone exposes no rope_deltas after the prefix pass")
            delta = int(rd.reshape(-1)[0])
        layers = [(layer.keys, layer.values) for layer in prefix_cache.layers]
        tails = [e.input_ids[n:] for e in encoded]
        out: list[float] = [0.0] * len(encoded)
        for idx in self.plan_batches([len(t) for t in tails]):
            g = len(idx)
            width = len(tails[idx[0]])  # plan_batches puts the longest first
            ids = torch.full((g, width), self.encoder.pad_id, dtype=first.input_ids.dtype)
            mask = torch.zeros((g, n + width), dtype=torch.long)
            mask[:, :n] = 1
            last = torch.empty(g, dtype=torch.long)
            for row, i in enumerate(idx):
                t = tails[i]
                ids[row, : len(t)] = t
                mask[row, n: n + len(t)] = 1
                last[row] = len(t) - 1
            pos = (torch.arange(n, n + width) + delta)[None].expand(g, width)
            if mrope:
                pos = pos[None].expand(3, g, width)
            cache = DynamicCache(ddp_cache_data=[(k.expand(g, -1, -1, -1), v.expand(g, -1, -1, -1)) for k, v in layers])
            self.forward_calls += 1
            res = base(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=True,
                       **{cache_kw: cache})
            hidden = res.last_hidden_state
            pooled = hidden[torch.arange(g, device=hidden.device), last.to(hidden.device)]
            for i, v in zip(idx, self.head(pooled).float().cpu().tolist()):
                out[i] = v
        return out


class FeatureCache:
    """A least-recently-used map from content keys to tensors, bounded by their total bytes."""

    def __init__(self, max_bytes: int) -> None:
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, *, touch: bool = True) -> torch.Tensor | None:
        with self._lock:
            v = self._items.get(key)
            if touch:
                if v is None:
                    self.misses += 1
                else:
                    self.hits += 1
                    self._items.move_to_end(key)
            return v

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, v = self._items.popitem(last=False)
                self.bytes -= v.numel() * v.element_size()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


def _content_key(pixels: torch.Tensor, grid: torch.Tensor) -> str:
    """A hash of one image's preprocessed pixels, its grid, dtype and shape."""
    import hashlib

    h = hashlib.blake2b(digest_size=20)
    h.update(f"{tuple(pixels.shape)}|{pixels.dtype}|{grid.tolist()}".encode())
    h.update(pixels.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_ACCEPTS: dict[tuple[type, str], bool] = {}


def _accepts(module: nn.Module, name: str) -> bool:
    key = (type(module), name)
    if key not in _ACCEPTS:
        _ACCEPTS[key] = name in inspect.signature(module.forward).parameters
    return _ACCEPTS[key]


def _sample_field(e: MmrmError, n_prompt: int) -> MmrmError:
    """Rename the encoder's ``messages[k]`` field to the Sample's own ``prompt[k]`` / ``response``."""
    import re

    if e.field:
        m = re.match(r"messages\[(\d+)\](.*)", e.field)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            e.field = f"prompt[{k}]{rest}" if k < n_prompt else f"response{rest}"
    return e


def _hidden_size(model: nn.Module) -> int:
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    return int(text.hidden_size)


def _pool_token(enc: Encoder) -> str:
    """The token a rendered (prompt, response) conversation ends with once trailing space is stripped."""
    probe = [Message(role="user", content="x"), Message(role="assistant", content="y")]
    ids = enc.tokenizer(enc.render(probe, strip_end=True), add_special_tokens=False)["input_ids"]
    return enc.tokenizer.convert_ids_to_tokens(ids[-1])


def _strip_lora_from_saved(path: Path) -> None:
    """peft's get_base_model() still holds LoRA layers; rewrite the saved weights without them."""
    from safetensors.torch import load_file, save_file

    for f in path.glob("model*.safetensors"):
        sd = load_file(str(f))
        clean = {}
        for k, v in sd.items():
            if "lora_" in k:
                continue
            clean[k.replace(".base_layer.", ".")] = v
        save_file(clean, str(f), metadata={"format": "pt"})
