"""mmrm.judges: generative judges (pointwise, pairwise, rubric checklists) on hf and OpenAI-compatible backends.

    from mmrm.judges import Judge, JudgeOptions, load_rubric
    from mmrm.judges.backends.hf import HFJudgeBackend          # in-process transformers
    from mmrm.judges.backends.openai import OpenAIJudgeBackend  # vLLM, SGLang, hosted APIs

Backends are imported from their modules so this package does not import torch or httpx.
"""

from mmrm.judges.judge import Judge, JudgeOptions
from mmrm.judges.panel import Panel
from mmrm.judges.rubrics import Rubric, list_rubrics, load_rubric

__all__ = ["Judge", "JudgeOptions", "Panel", "Rubric", "list_rubrics", "load_rubric"]
