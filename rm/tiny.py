"""Tiny models of REAL architectures, built locally with no network.

Tests, the digits demo and benchmarks need models, and nothing may be downloaded. These builders
write an ordinary checkpoint directory (config, random weights with a fixed seed, a byte-level BPE
tokenizer trained locally, a chat template, and for VLMs a processor) that loads back by path with
the ordinary ``Auto*`` classes. The rest of mmrm never knows the model is tiny.

Architectures: ``qwen2`` (text-only causal LM), ``qwen2_vl`` (Qwen2-VL), ``qwen2_5_vl``
(Qwen2.5-VL) and ``qwen3_vl`` (Qwen3-VL: 16-pixel patches, interleaved M-RoPE, DeepStack). The ``small`` size is a compute-bound text model for benchmarks (~25M parameters).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

Arch = Literal["qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
Size = Literal["tiny", "small"]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

def chat_template(default_system: str | None = None) -> str:
    """A Qwen-style ChatML template. Media parts render as the vision placeholders that the Qwen2-VL
    processor expands into one pad token per visual token. ``default_system``: a system turn put
    first when the conversation has none (as Qwen2.5-VL-Instruct's own template does)."""
    first = ("{%- if loop.first and message['role'] != 'system' -%}<|im_start|>system\n" + default_system
             + "<|im_end|>{{ '\\n' }}{%- endif -%}") if default_system else ""
    return (
        "{%- for message in messages -%}" + first
        + "<|im_start|>{{ message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- elif part['type'] in ['image', 'image_url'] -%}<|vision_start|><|image_pad|><|vision_end|>"
        "{%- elif part['type'] in ['video', 'video_url'] -%}<|vision_start|><|video_pad|><|vision_end|>"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "<|im_end|>{{ '\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
    )


CHAT_TEMPLATE = chat_template()

_WORDS = (
    "the a an is are was be of to in on at for with by from and or not no yes this that these those "
    "image picture photo video frame shows show there what which who where when how why describe "
    "answer question response assistant user system score reward better worse good bad correct wrong "
    "digit number zero one two three four five six seven eight nine ten cat dog car red blue green "
    "left right top bottom person people table chair sky tree water text sign color colour count many "
    "A B tie Score Verdict rating helpful harmless honest accurate detailed concise relevant edit "
    "generated button page click scroll window menu login form layout style quality consistent "
    "The digit is Which in It I you we they he she it my your our their very more most less "
    "because however therefore also only just first second final step reason think so then than"
).split()


def _corpus(seed: int = 0, n: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n)]
    lines += [f"The digit is {d}." for d in range(10)] * 20
    lines += [f"{i} {i * 7 % 100} {i / 4:.2f} [[A]] [[B]] [[tie]] {{\"score\": {i % 10}}}" for i in range(300)]
    lines += ["".join(chr(c) for c in range(32, 127))] * 5
    return lines


def build_tokenizer(out_dir: str | Path, *, vocab_size: int = 2048, seed: int = 0):
    """Train a byte-level BPE tokenizer locally and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    # The VL processors look these up by attribute.
    fast.image_token = "<|image_pad|>"
    fast.video_token = "<|video_pad|>"
    fast.save_pretrained(str(out_dir))
    return fast


def _text_dims(size: Size) -> dict:
    if size == "tiny":
        return dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    # ~25M parameters: compute-bound like real models (benchmarks).
    return dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2)


def build_tiny_model(arch: Arch, out_dir: str | Path, *, seed: int = 0, size: Size = "tiny") -> Path:
    """Build a tiny (or ``small``) model of a real architecture into ``out_dir`` and return the path.

    Deterministic: the same ``arch``, ``size`` and ``seed`` give the same tokenizer and weights.
    Loads back with ``AutoModelForCausalLM`` (``qwen2``) or ``AutoModelForImageTextToText`` and
    ``AutoProcessor`` (VL architectures).
    """
    import torch
    import transformers as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, seed=seed)
    vocab = len(tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=vocab,
        max_position_embeddings=4096,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        **_text_dims(size),
    )
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    torch.manual_seed(seed)
    if arch == "qwen2":
        config = tf.Qwen2Config(**text)
        model = tf.Qwen2ForCausalLM(config)
    else:
        # mrope sections must sum to head_dim / 2 (temporal, height, width).
        half = head_dim // 2
        t = half // 4
        h = (half - t) // 2
        mrope = [t, h, half - t - h]
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope}
        common = dict(
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=False,
        )
        # ``small``: a 4-block, 256-wide vision tower (~3M parameters), so images cost compute as in
        # real VLMs; ``tiny`` keeps the 2-block, 64-wide one the tests were written against.
        small = size == "small"
        if arch == "qwen2_vl":
            vision = dict(depth=4 if small else 2, embed_dim=256 if small else 64, hidden_size=text["hidden_size"],
                          num_heads=4 if small else 2, mlp_ratio=4 if small else 2,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
            config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **common)
            model = tf.Qwen2VLForConditionalGeneration(config)
        elif arch == "qwen2_5_vl":
            if small:
                vision = dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4,
                              out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                              temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1, 3], tokens_per_second=2)
            else:
                vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=text["hidden_size"],
                              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                              fullatt_block_indexes=[1], tokens_per_second=2)
            config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
            model = tf.Qwen2_5_VLForConditionalGeneration(config)
        elif arch == "qwen3_vl":
            # Qwen3-VL: 16-pixel patches, a learned position grid (num_position_embeddings must be a
            # square), DeepStack features from the listed vision blocks into the first decoder layers,
            # and interleaved M-RoPE (its sections also sum to head_dim / 2).
            text["head_dim"] = head_dim
            text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
            vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=text["hidden_size"],
                          patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                          deepstack_visual_indexes=[1])
            config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **common)
            model = tf.Qwen3VLForConditionalGeneration(config)
        else:
            raise ValueError(f"unknown arch {arch!r}; choose qwen2, qwen2_vl, qwen2_5_vl or qwen3_vl")
        # Small pixel range: keeps tests fast; the product reads these from the processor config.
        # (``small``: up to 1024 visual tokens, e.g. 896x896, so realistic image sizes keep their cost.)
        img_kw = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * (1024 if small else 256))
        if arch == "qwen3_vl":
            px = 32 * 32  # one merged visual token covers 32x32 pixels (patch 16, merge 2)
            image_processor = tf.Qwen2VLImageProcessor(patch_size=16, merge_size=2, min_pixels=px * 4, max_pixels=px * 256,
                                                       image_mean=[0.5] * 3, image_std=[0.5] * 3)
            video_processor = tf.Qwen3VLVideoProcessor(patch_size=16, merge_size=2, min_pixels=px * 4, max_pixels=px * 64)
            proc_cls = tf.Qwen3VLProcessor
        else:
            image_processor = tf.Qwen2VLImageProcessor(**img_kw)
            video_processor = tf.Qwen2VLVideoProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
            proc_cls = tf.Qwen2VLProcessor if arch == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        processor = proc_cls(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                             chat_template=CHAT_TEMPLATE)
        processor.save_pretrained(str(out))
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.save_pretrained(str(out))
    (out / "mmrm_tiny.json").write_text(json.dumps({"arch": arch, "size": size, "seed": seed}) + "\n")
    return out
