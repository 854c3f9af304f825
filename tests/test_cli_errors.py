"""Every ``mmrm`` command prints its errors literally: field names in brackets survive rich.

Errors name the field that is wrong in brackets (``MmrmError``: ``"... [row 0.ranking]"``; pydantic:
``"[type=missing, ...]"``). Printed through rich as markup, a bracketed word that looks like a tag
(``[benchmark]``) silently disappears, and the user is left without the field's name. Each case
below is a real error path of a real command, run through the top-level app with typer's CliRunner,
on inputs that fail before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrm.cli import app

runner = CliRunner()

VLRB_ROW = {"id": "a", "query": "q", "response": ["x", "y"], "ranking": [1, 1]}  # a tie: no chosen side

CASES = {
    # command line (FILE: the case's input file), the input, what the error must show literally
    "eval run, unknown benchmark": (["eval", "run", "nope", "FILE", "--checkpoint", "/nonexistent"],
                                    json.dumps(VLRB_ROW), ["unknown benchmark 'nope' [benchmark]",
                                                           "(limit: ['mj-bench', 'mm-rlhf-rewardbench'"]),
    "eval run, bad row": (["eval", "run", "vl-rewardbench", "FILE", "--checkpoint", "/nonexistent"],
                          json.dumps(VLRB_ROW), ["does not order the two responses (2 given; expected [0, 1] or [1, 0]",
                           "preferred one) [row 0.ranking]"]),
    "score, bad row": (["score", "/nonexistent", "--input", "FILE"], json.dumps({"prompt": "p", "response": ["x"]}),
                       ["content.list[tagged-union[TextPart,ImagePart,VideoPart]].0",
                        "[type=model_attributes_type, input_value='x', input_type=str]"]),
    "train, bad config": (["train", "--config", "FILE"], "backbone: tiny\nnope: 1\n",
                          ["nope", "Extra inputs are not permitted [type=extra_forbidden, input_value=1"]),
    "serve, bad config": (["serve", "FILE"], "models: 3\n", ["applications", "Field required [type=missing"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_errors_keep_bracketed_field_names(case: str, tmp_path: Path) -> None:
    args, content, literals = CASES[case]
    data = tmp_path / "input"
    data.write_text(content + "\n")
    res = runner.invoke(app, [str(data) if a == "FILE" else a for a in args])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: "), res.output
    for text in literals:  # literally: not dropped as markup, and not wrapped in two (soft_wrap)
        assert text in res.output, f"{text!r} missing from:\n{res.output}"
