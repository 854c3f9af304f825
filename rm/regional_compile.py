"""Regional ``torch.compile`` of a decoder's MLP and norm blocks (opt-in, inference).

On a CPU a quarter of the forward is memory-bound elementwise work (SiLU, the gate product,
RMSNorm) between the matmuls; inductor fuses it. Compiling only these blocks, not the whole
model, keeps attention (and packing, :mod:`mmrm.rm.packing`) eager, compiles each block's code
once for every layer, and needs no recompiling when lengths change (``dynamic=True``). The cost
is start-up time (about 30 s for an 8-layer model on two CPU cores; inductor caches it on disk).
"""

from __future__ import annotations

from torch import nn

#: child names of a decoder layer that are compiled (Llama, Qwen2, Qwen2-VL, Mistral families).
REGIONS = ("mlp", "input_layernorm", "post_attention_layernorm")


def compile_regions(backbone: nn.Module) -> int:
    """Compile the :data:`REGIONS` of every decoder layer under ``backbone``; returns how many."""
    n = 0
    for module in backbone.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            for name in REGIONS:
                child = getattr(module, name, None)
                if isinstance(child, nn.Module):
                    child.compile(dynamic=True)
                    n += 1
    return n
