"""Judge backends: ``hf`` (in-process transformers) and ``openai`` (any OpenAI-compatible server).

Both implement :class:`~mmrm.judges.backends.base.JudgeBackend`. They are imported lazily so
``mmrm.judges`` stays light (the ``openai`` backend never imports torch).
"""
