"""The ``hf`` judge backend: a transformers model in this process.

Conversations become tensors through :class:`mmrm.rm.encode.Encoder` (the project's one
conversation -> tensors path; media load through :mod:`mmrm.rm.media` with its limits), then:

* :meth:`HFJudgeBackend.label_probs`: ONE batched forward per chunk of ``max_batch_size``
  requests, left-padded so the verdict position (the last token: the end of the prefill) is the
  same column for every row, with ``logits_to_keep=1``. The softmax is over the full vocabulary,
  so nothing is lost to a top-k limit (``top_k=None``).
* :meth:`HFJudgeBackend.generate`: one batched ``generate`` per (seed, temperature, max_tokens,
  stop strings) group; a row ends at its first stop string (transformers' ``stop_strings``), and
  the reply's text ends before it. A request with an :class:`~mmrm.judges.parsing.AnswerSchema` is constrained token by token
  to the schema's JSON (fixed segments forced, label slots restricted to the labels' tokens, then
  end of sequence): structured output without a grammar library, exact because judge schemas are
  flat enums of single-token labels.

If a batch fails as a whole (e.g. out of memory), its items are retried one by one so only the
item that fails carries an error.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from mmrm.judges.backends.base import GenReply, GenRequest, LabelReply, LabelRequest
from mmrm.judges.parsing import AnswerSchema
from mmrm.rm.encode import Encoded, Encoder, collate
from mmrm.rm.errors import BackendError, ConfigError, MmrmError
from mmrm.rm.loading import resolve_device
from mmrm.rm.media import MediaLoader, MediaPolicy

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Per-token tensors that must grow when prefill tokens are appended (value for the new tokens).
_SEQ_FILL = {"attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}


def _as_error(e: Exception) -> MmrmError:
    if isinstance(e, MmrmError):
        return e
    return BackendError(f"hf backend failed: {type(e).__name__}: {e}")


class HFJudgeBackend:
    """A judge backend running a transformers checkpoint in-process.

    Args:
        model_path: checkpoint directory (a VLM with a processor, or a text-only causal LM).
        device: ``"auto"`` (the first CUDA device when there is one, else the CPU), ``"cpu"``, ``"cuda[:N]"``.
        dtype: compute dtype name.
        max_batch_size: requests per forward pass.
        max_length: longest judge prompt in tokens (longer ones are refused per item).
        media_policy: limits and allowed sources for media in judged conversations.
    """

    engine = "hf"
    supports_logprobs = True
    supports_json_schema = True
    supports_prefill = True

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        max_batch_size: int = 16,
        max_length: int = 4096,
        media_policy: MediaPolicy | None = None,
    ) -> None:
        import transformers as tf

        if dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}", field="dtype", limit=sorted(_DTYPES))
        if max_batch_size < 1:
            raise ConfigError("max_batch_size must be at least 1", field="max_batch_size", limit=1)
        self.path = Path(model_path)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.scorer_id = self.path.name
        config = tf.AutoConfig.from_pretrained(self.path)
        if hasattr(config, "vision_config"):
            self.processor = tf.AutoProcessor.from_pretrained(self.path)
            model_cls = tf.AutoModelForImageTextToText
        else:
            self.processor = tf.AutoTokenizer.from_pretrained(self.path)
            model_cls = tf.AutoModelForCausalLM
        self.model = model_cls.from_pretrained(self.path, dtype=_DTYPES[dtype]).to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.encoder = Encoder(self.processor, media=MediaLoader(media_policy) if media_policy else None, max_length=max_length)
        self.eos_id = int(self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)) if self.tokenizer.eos_token else None
        self._label_ids: dict[str, list[int]] = {}
        self._token_texts: list[str] | None = None
        self._lock = threading.Lock()  # generate() seeds torch's global RNG

    # ----------------------------------------------------------------------------------------------
    def config_fingerprint(self) -> dict[str, Any]:
        files = sorted(p.name for p in self.path.glob("*.safetensors"))
        sizes = [(self.path / f).stat().st_size for f in files]
        return {"engine": "hf", "model": self.scorer_id, "weights": list(zip(files, sizes)), "dtype": self.dtype}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_labels(self, prefill: str, labels: tuple[str, ...]) -> None:
        base = self._ids(prefill)
        for lab in labels:
            ids = self._ids(prefill + lab)
            if len(ids) != len(base) + 1 or ids[: len(base)] != base:
                toks = self.tokenizer.convert_ids_to_tokens(ids[len(base):])
                raise ConfigError(
                    f"label {lab!r} is not a single token after {prefill!r} for this tokenizer ({toks}); "
                    "use labels that are single tokens (e.g. a 1..9 scale, not 1..10)",
                    field="labels",
                    limit="one token per label",
                )

    def label_token_ids(self, label: str) -> list[int]:
        """Every vocabulary token whose text, stripped of whitespace, equals ``label``."""
        if label not in self._label_ids:
            if self._token_texts is None:
                n = len(self.tokenizer)
                special = set(self.tokenizer.all_special_ids)
                self._token_texts = [
                    "" if i in special else t.strip()
                    for i, t in enumerate(self.tokenizer.batch_decode([[i] for i in range(n)]))
                ]
            self._label_ids[label] = [i for i, t in enumerate(self._token_texts) if t == label]
        return self._label_ids[label]

    # ----------------------------------------------------------------------------------------------
    def _encode(self, messages: list, prefill: str) -> Encoded:
        enc = self.encoder.encode(messages, add_generation_prompt=True)
        extra = self._ids(prefill) if prefill else []
        if not extra:
            return enc
        if enc.length + len(extra) > self.encoder.max_length:
            from mmrm.rm.errors import InputTooLong

            raise InputTooLong("judge prompt is longer than max_length", field="messages", limit=self.encoder.max_length)
        add = torch.tensor(extra, dtype=enc.input_ids.dtype)
        extras = dict(enc.extras)
        for k, fill in _SEQ_FILL.items():
            if k in extras:
                v = extras[k]
                extras[k] = torch.cat([v, torch.full((len(extra),), fill, dtype=v.dtype)])
        return Encoded(input_ids=torch.cat([enc.input_ids, add]), extras=extras, n_images=enc.n_images, n_videos=enc.n_videos)

    def _batch(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        batch = collate(items, self.encoder.pad_id, padding_side="left")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _chunks(self, idx: list[int]) -> list[list[int]]:
        return [idx[i : i + self.max_batch_size] for i in range(0, len(idx), self.max_batch_size)]

    @torch.inference_mode()
    def _last_logprobs(self, items: list[Encoded]) -> torch.Tensor:
        out = self.model(**self._batch(items), logits_to_keep=1)
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)

    def label_probs(self, requests: list[LabelRequest]) -> list[LabelReply]:
        replies: list[LabelReply] = [LabelReply() for _ in requests]
        encoded: dict[int, Encoded] = {}
        for i, r in enumerate(requests):
            try:
                encoded[i] = self._encode(r.messages, r.prefill)
            except Exception as e:  # noqa: BLE001 - one item's failure stays with that item
                replies[i].error = _as_error(e)

        def fill(rows: list[int], logp: torch.Tensor) -> None:
            for row, i in enumerate(rows):
                probs = {}
                for lab in requests[i].labels:
                    ids = self.label_token_ids(lab)
                    probs[lab] = float(logp[row, ids].exp().sum()) if ids else 0.0
                replies[i].probs = probs
                replies[i].top_k = None

        for rows in self._chunks(sorted(encoded, key=lambda i: encoded[i].length)):
            try:
                fill(rows, self._last_logprobs([encoded[i] for i in rows]))
            except Exception:  # noqa: BLE001 - isolate the failing item by retrying one by one
                for i in rows:
                    try:
                        fill([i], self._last_logprobs([encoded[i]]))
                    except Exception as e:  # noqa: BLE001
                        replies[i].error = _as_error(e)
        return replies

    # ----------------------------------------------------------------------------------------------
    def _compile(self, schema: AnswerSchema) -> list[list[int]]:
        """The schema's template as allowed token ids per generated step."""
        steps: list[list[int]] = []
        for seg in schema.template():
            if isinstance(seg, str):
                steps += [[t] for t in self._ids(seg)]
            else:
                self.check_labels("", seg)
                steps.append([self._ids(lab)[0] for lab in seg])
        return steps

    @torch.inference_mode()
    def _generate(self, reqs: list[GenRequest], items: list[Encoded]) -> list[GenReply]:
        r0 = reqs[0]
        batch = self._batch(items)
        width = batch["input_ids"].shape[1]
        plans = [self._compile(r.schema) if r.schema is not None else None for r in reqs]
        processors = []
        if any(p is not None for p in plans):
            processors.append(_TemplateConstraint(plans, width, self.eos_id))
        kwargs: dict[str, Any] = dict(max_new_tokens=r0.max_tokens, pad_token_id=self.encoder.pad_id, eos_token_id=self.eos_id)
        if r0.stop:
            kwargs.update(stop_strings=list(r0.stop), tokenizer=self.tokenizer)
        if r0.temperature > 0:
            kwargs.update(do_sample=True, temperature=r0.temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        with self._lock:
            torch.manual_seed(r0.seed)
            out = self.model.generate(**batch, **kwargs)
        replies = []
        for row in range(len(reqs)):
            new = out[row, width:].tolist()
            stopped = self.eos_id is not None and self.eos_id in new
            if stopped:
                new = new[: new.index(self.eos_id)]
            text = self.tokenizer.decode([t for t in new if t != self.encoder.pad_id], skip_special_tokens=True)
            hit = _first_stop(text, r0.stop)
            if hit is not None:  # the reply ends before its stop string, as on OpenAI-compatible servers
                text, stopped = text[: text.index(hit)], True
            replies.append(GenReply(text=text, finish_reason="stop" if stopped else "length", stop=hit,
                                    usage={"completion_tokens": len(new)}))
        return replies

    def generate(self, requests: list[GenRequest]) -> list[GenReply]:
        replies: list[GenReply] = [GenReply() for _ in requests]
        encoded: dict[int, Encoded] = {}
        for i, r in enumerate(requests):
            try:
                encoded[i] = self._encode(r.messages, r.prefill)
            except Exception as e:  # noqa: BLE001
                replies[i].error = _as_error(e)
        groups: dict[tuple[int, float, int, tuple[str, ...]], list[int]] = {}
        for i in encoded:
            r = requests[i]
            groups.setdefault((r.seed, r.temperature, r.max_tokens, r.stop), []).append(i)
        for idx in groups.values():
            for rows in self._chunks(idx):
                try:
                    got = self._generate([requests[i] for i in rows], [encoded[i] for i in rows])
                    for i, g in zip(rows, got):
                        replies[i] = g
                except Exception:  # noqa: BLE001 - isolate the failing item
                    for i in rows:
                        try:
                            replies[i] = self._generate([requests[i]], [encoded[i]])[0]
                        except Exception as e:  # noqa: BLE001
                            replies[i] = GenReply(error=_as_error(e))
        return replies


def _first_stop(text: str, stops: tuple[str, ...]) -> str | None:
    """The stop string that occurs first in ``text`` (None when none does)."""
    at = {s: text.find(s) for s in stops if s and s in text}
    return min(at, key=lambda s: at[s]) if at else None


class _TemplateConstraint(LogitsProcessor):
    """A logits processor that forces each row along its compiled schema template, then EOS."""

    def __init__(self, plans: list[list[list[int]] | None], prompt_width: int, eos_id: int | None) -> None:
        self.plans = plans
        self.width = prompt_width
        self.eos_id = eos_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        for row, plan in enumerate(self.plans):
            if plan is None:
                continue
            allowed = plan[step] if step < len(plan) else ([self.eos_id] if self.eos_id is not None else [])
            if not allowed:
                continue
            keep = scores[row, allowed].clone()
            scores[row, :] = float("-inf")
            scores[row, allowed] = keep
        return scores
