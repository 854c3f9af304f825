"""RewardModel: a transformers backbone plus a reward head, pooled at the last real token.

>>> rm = RewardModel.from_pretrained("runs/digits-rm")           # doctest: +SKIP
>>> rm.score([Sample(prompt="Which digit?", response="The digit is 3.")])  # doctest: +SKIP
[0.41...]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

import mmrm
from mmrm.rm import checkpoint as ckpt
from mmrm.rm.encode import Encoded, Encoder, collate
from mmrm.rm.errors import ConfigError, InputTooLong, MmrmError
from mmrm.rm.heads import HeadType, RewardHead, pool_last_token
from mmrm.rm.media import MediaLoader, MediaPolicy
from mmrm.rm.normalize import group_normalize
from mmrm.rm.results import pair_result
from mmrm.rm.types import Group, Message, Pair, Provenance, Sample, ScoreResult, as_response

log = logging.getLogger(__name__)

DType = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class GroupScores:
    """Scores of one group (GRPO): raw rewards and group-normalized ones (see ``group_normalize``)."""

    raw: list[float]
    normalized: list[float]


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
    processor = tf.AutoProcessor.from_pretrained(str(path)) if vision else tf.AutoTokenizer.from_pretrained(str(path))
    return model, processor, vision


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
    """

    def __init__(
        self,
        backbone: nn.Module,
        processor: Any,
        head: RewardHead,
        config: ckpt.RewardConfig,
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
        cfg = ckpt.RewardConfig(
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
    ) -> "RewardModel":
        """Load a checkpoint directory (mmrm format, or a one-label ``*ForSequenceClassification``).

        ``dtype`` is the backbone's compute dtype; the head stays ``head_dtype`` (float32 default).
        ``max_length`` / ``truncation`` override the checkpoint's values.
        """
        from safetensors.torch import load_file

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
            return cls._from_sequence_classification(
                path, dtype=dtype, device=device, head_dtype=head_dtype, max_length=max_length,
                truncation=truncation, media_policy=media_policy, name=name,
                max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
            )
        model, processor, _ = _load_backbone(path, dtype=_DTYPES[dtype], sequence_classification=False)
        if cfg.lora == "adapter":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path / ckpt.ADAPTER_DIR))
        head = RewardHead(cfg.head.hidden_size, cfg.head.type, cfg.head.inner_size)
        head.load_state_dict(load_file(str(path / ckpt.HEAD_NAME)))
        head.to(_DTYPES[head_dtype])
        updates = {k: v for k, v in (("max_length", max_length), ("truncation", truncation)) if v is not None}
        cfg = cfg.model_copy(update=updates)
        rm = cls(
            model, processor, head, cfg, media=MediaLoader(media_policy), name=name or path.name,
            fingerprint=ckpt.fingerprint(path), max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
        )
        return rm.to(resolve_device(device)).eval()

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
        cfg = ckpt.RewardConfig(
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
            mmrm_version=mmrm.__version__, engine="hf", dtype=str(self.dtype).removeprefix("torch."),
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

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards [batch] for a collated batch (one backbone forward pass)."""
        self.forward_calls += 1
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = base_model(self.backbone)(**batch, use_cache=False)
        pooled = pool_last_token(out.last_hidden_state, batch["attention_mask"])
        return self.head(pooled)

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches: longest first, capped by items and by padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]  # sorted: the first is the longest
            if cur and (len(cur) >= self.max_batch_size or width * (len(cur) + 1) > self.max_batch_tokens):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    @torch.no_grad()
    def rewards_of(self, encoded: Sequence[Encoded]) -> list[float | MmrmError | RuntimeError]:
        """Rewards for encoded samples, batched; a batch that fails is retried item by item."""
        results: list[float | MmrmError | RuntimeError] = [0.0] * len(encoded)
        for idx in self.plan_batches([e.length for e in encoded]):
            try:
                r = self.forward(collate([encoded[i] for i in idx], self.encoder.pad_id)).float().cpu().tolist()
            except RuntimeError as e:
                if len(idx) == 1:
                    log.warning("reward forward failed for one item: %s", e)
                    results[idx[0]] = e
                    continue
                log.warning("batched forward of %d items failed (%s); retrying one by one", len(idx), e)
                r = []
                for i in idx:
                    one = self.rewards_of([encoded[i]])[0]
                    r.append(one)
            for i, v in zip(idx, r):
                results[i] = v
        return results

    def score_results(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        """One :class:`ScoreResult` per sample; invalid items carry their error, the rest score."""
        prov = self.provenance
        encoded: list[Encoded | MmrmError] = []
        for s in samples:
            try:
                encoded.append(self.encode(s))
            except MmrmError as e:
                encoded.append(e)
        ok = [i for i, e in enumerate(encoded) if isinstance(e, Encoded)]
        rewards = self.rewards_of([encoded[i] for i in ok])  # type: ignore[misc]
        out: list[ScoreResult | None] = [None] * len(samples)
        for i, r in zip(ok, rewards):
            encoded[i] = r  # type: ignore[assignment]
        for i, v in enumerate(encoded):
            if isinstance(v, float):
                out[i] = ScoreResult(value=v, provenance=prov)
            else:
                out[i] = ScoreResult.failed(v, prov)
        return out  # type: ignore[return-value]

    def score(self, samples: Sequence[Sample]) -> list[float]:
        """Rewards, one per sample. Raises the first item's error if any item cannot be scored."""
        return [r.raise_for_invalid() for r in self.score_results(samples)]

    def compare_results(self, pairs: Sequence[Pair]) -> list[ScoreResult]:
        """P(A > B) = sigmoid(r_A - r_B) per pair; both sides of every pair go through one batched pass."""
        flat = [s for p in pairs for s in p.samples()]
        res = self.score_results(flat)
        return [pair_result(res[2 * k], res[2 * k + 1]) for k in range(len(pairs))]

    def compare(self, pairs: Sequence[Pair]) -> list[float]:
        """P(A > B) per pair. Raises if a pair cannot be scored."""
        return [r.raise_for_invalid() for r in self.compare_results(pairs)]

    def score_group(self, prompt: list[Message] | str, responses: Sequence[Any], *, eps: float = 1e-6) -> GroupScores:
        """Raw and group-normalized rewards of N responses to one prompt (a GRPO group)."""
        group = Group(prompt=prompt, responses=[as_response(r) for r in responses])
        raw = self.score(group.samples())
        return GroupScores(raw=raw, normalized=group_normalize(raw, eps=eps))


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
