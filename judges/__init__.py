"""mmrm.judges: generative judges (pointwise, pairwise, rubric checklists, reasoning presets) on hf and OpenAI-compatible backends.

    from mmrm.judges import Judge, JudgeOptions, load_rubric, load_preset
    from mmrm.judges.backends.hf import HFJudgeBackend          # in-process transformers
    from mmrm.judges.backends.openai import OpenAIJudgeBackend  # vLLM, SGLang, hosted APIs

Backends are imported from their modules so this package does not import torch or httpx.
"""

from mmrm.judges.judge import Judge, JudgeOptions
from mmrm.judges.panel import Panel
from mmrm.judges.presets import Preset, list_presets, load_preset
from mmrm.judges.rubrics import Rubric, list_rubrics, load_rubric

__all__ = ["Judge", "JudgeOptions", "Panel", "Preset", "Rubric", "list_presets", "list_rubrics", "load_preset", "load_rubric"]
