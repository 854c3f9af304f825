"""How a reward model is loaded and scores: one options model for every entry point.

:class:`ScoringOptions` is what :meth:`RewardModel.from_pretrained
<mmrm.rm.reward_model.RewardModel.from_pretrained>` takes (``options=``, plus keyword overrides of
its fields), and what the other entry points embed rather than re-list: a model entry of the serve
config (``mmrm.serve.config.ModelConfig``) has its fields at the top level, the eval runner's
``RewardModelSpec`` too, ``RewardFn.from_checkpoint`` passes them through, and ``mmrm score``
builds one from its flags.

>>> ScoringOptions().device, ScoringOptions().max_length
('auto', None)
>>> ScoringOptions(max_length=2048, packing="off").max_length
2048

Lengths: ``max_length: None`` means the checkpoint's own ``max_length`` (``mmrm_reward.json``),
which is 4096 unless the checkpoint records another; a ``*ForSequenceClassification`` checkpoint
has none and scores up to 4096 tokens. A checkpoint written by ``mmrm train`` records its training
length (``TrainConfig.max_length``, 2048 by default), so it never scores longer inputs than it was
trained on unless the options say so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmrm.rm.media import MediaPolicy

__all__ = ["DType", "EngineName", "LayoutName", "ModelOptions", "Packing", "ScoringOptions", "Truncation", "VLLMServer"]

DType = Literal["float32", "bfloat16", "float16"]
Truncation = Literal["refuse", "left"]
Packing = Literal["auto", "on", "off"]
EngineName = Literal["hf", "vllm"]
#: the checkpoint layouts :mod:`mmrm.rm.layouts` knows.
LayoutName = Literal["mmrm", "value_head", "docreward", "openrlhf", "sequence_classification", "mm_rlhf"]

#: ``max_length`` of a checkpoint that records none (a sequence-classification checkpoint).
DEFAULT_MAX_LENGTH = 4096


class VLLMServer(BaseModel):
    """Where the ``vllm`` engine's server runs (started by you; see :mod:`mmrm.rm.engines.vllm`)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://", description="The vLLM server's OpenAI API, e.g. http://127.0.0.1:8001/v1.")
    served_model: str = Field(min_length=1, description="The model name the server was started with.")
    timeout_s: float = Field(default=120, gt=0, description="Seconds per request to the server.")
    api_key: str | None = Field(default=None, repr=False, description="The server's API key, if it has one.")


class ModelOptions(BaseModel):
    """Every loading and scoring option except the media policy (a service sets that once for all
    its models, under ``limits.media``); :class:`ScoringOptions` adds it."""

    model_config = ConfigDict(extra="forbid")

    # Parameters that control which engine runs the backbone, where, and in which precision
    engine: EngineName = Field(
        default="hf", description="hf: the transformers backbone in this process; vllm: a vLLM server runs it.")
    vllm: VLLMServer | None = Field(default=None, description="The vLLM server; required with engine: vllm.")
    layout: LayoutName | None = Field(
        default=None, description="hf engine: the checkpoint layout (mmrm, value_head, docreward, openrlhf, "
        "sequence_classification, mm_rlhf); None detects it from the files (see `mmrm inspect`).")
    device: str = Field(
        default="auto", description="hf engine: auto (the first CUDA device when there is one, else the CPU), cpu, "
        "cuda or cuda:N. The vllm engine runs only the head here, on the CPU.")
    dtype: DType = Field(default="float32", description="hf engine: the backbone's compute dtype.")
    head_dtype: DType = Field(
        default="float32", description="The reward head's dtype (float32 keeps small reward margins whatever the "
        "backbone's dtype).")
    compile: bool = Field(
        default=False, description="hf engine: torch.compile the decoder's MLP and norm blocks at load (slower "
        "start, faster CPU forwards; mmrm.rm.regional_compile).")

    # Parameters that control the length policy
    max_length: int | None = Field(
        default=None, gt=0, description="Longest input in tokens, media expanded. None: the checkpoint's "
        "max_length (4096 unless the checkpoint records another).")
    truncation: Truncation | None = Field(
        default=None, description="An over-long input: refuse (422, input_too_long) or drop prompt tokens from the "
        "left. None: the checkpoint's (refuse unless it records left).")

    # Parameters that control batching
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Samples per forward pass.")
    max_batch_tokens: int = Field(default=16384, ge=1, description="Padded tokens per forward pass.")
    packing: Packing = Field(
        default="auto", description="hf engine: pack text-only samples end to end into one row per forward, no "
        "padding (auto: on a CPU, where padding is wasted work; on a GPU a padded batch is one wide kernel).")
    pack_tokens: int = Field(
        default=2048, ge=1, description="hf engine: real tokens per packed row (a few thousand keeps a CPU's "
        "activations in cache); a longer sample gets a row of its own.")

    # Parameters that control caches and the shared-prefix path
    vision_cache_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="hf engine: bytes of image features kept by content hash, so "
        "an image seen before skips the vision tower (0: off).")
    shared_prefix: bool = Field(
        default=True, description="hf engine: a group's shared prompt (and its images) runs once and its responses "
        "attend to its cached keys and values (rank, and groups at the service).")
    min_shared_prefix: int = Field(
        default=16, ge=1, description="hf engine: a shared prefix shorter than this many tokens is not worth a "
        "forward of its own.")

    @model_validator(mode="after")
    def _engine(self) -> "ModelOptions":
        if self.engine == "vllm" and self.vllm is None:
            raise ValueError("engine: vllm needs a `vllm` block (base_url, served_model)")
        if self.engine == "hf" and self.vllm is not None:
            raise ValueError("a `vllm` block is used only with engine: vllm; set engine: vllm or remove it")
        return self


class ScoringOptions(ModelOptions):
    """The options of :meth:`RewardModel.from_pretrained <mmrm.rm.reward_model.RewardModel.from_pretrained>`
    (see the module docstring): :class:`ModelOptions` plus the media policy."""

    media_policy: MediaPolicy = Field(
        default_factory=MediaPolicy, description="Limits and allowed sources of media (the defaults are the safe ones: "
        "no local paths, no HTTP).")

    def model_options(self) -> ModelOptions:
        """These options without the media policy."""
        return ModelOptions.model_validate(self.model_dump(exclude={"media_policy"}))
