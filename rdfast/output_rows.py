"""What a scoring job's output row records besides its score, how a row is written as CSV, and the summary
printed at the end of a job.

Every row names what produced it: "reward_model" (the spec as given: a directory, ``tiny:NAME`` or a hub
id; not "model", which datasets use for the generator of an image),
"template" (the prompt layout's name; "rewarddance", today's layout, when the model has no other),
"instruction" (the name or text used for that row) and "answer_words" ([yes word, no word]). CSV writes
the fields a JSON row would hold, one column each; a list or object field is written as its JSON text, so
no information is lost and the cell parses back with ``json.loads``.
"""
from __future__ import annotations

import csv
import io
import json
import statistics

from .prompts import DEFAULT_INSTRUCTION
from .templates import DEFAULT as DEFAULT_LAYOUT

METADATA_FIELDS = ("reward_model", "template", "instruction", "answer_words")
FORMATS = ("jsonl", "csv")


def template_name(rm) -> str:
    """The name of the prompt layout ``rm`` renders with (the default layout when it records none)."""
    return getattr(getattr(rm, "template", None), "name", None) or DEFAULT_LAYOUT.name


def row_metadata(rm, model_spec: str, instruction: str | None) -> dict:
    """The metadata fields (module docstring) of a row scored by ``rm`` under ``instruction`` (None: the
    model's own instruction, else the default one)."""
    if instruction is None:
        instruction = getattr(rm, "instruction", None) or DEFAULT_INSTRUCTION
    answers = getattr(rm, "answers", None)  # a stand-in scorer may have none
    return {"reward_model": model_spec, "template": template_name(rm), "instruction": instruction,
            "answer_words": [answers.yes_word, answers.no_word] if answers is not None else None}


class CsvRows:
    """Rows as CSV lines over fixed ``columns`` (a field a row lacks is an empty cell).

    Args:
        columns: the header, in order; every row's fields must be among them.
    """

    def __init__(self, columns):
        self.columns = list(dict.fromkeys(columns))

    def _line(self, values) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()

    def header(self) -> str:
        return self._line(self.columns)

    def line(self, row: dict) -> str:
        """One CSV line for ``row``; raises ValueError for a field outside the columns or a non-finite number."""
        unknown = [f for f in row if f not in self.columns]
        if unknown:
            raise ValueError(f"row fields {unknown} are not among the CSV columns")
        return self._line([_cell(row.get(c)) for c in self.columns])


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value, allow_nan=False)
    if isinstance(value, float):
        return json.dumps(value, allow_nan=False)  # the shortest text that reads back as the same float
    return str(value)


def summary_text(command: str, scored: list[tuple[str, float]], top: int = 3) -> str:
    """The end-of-job summary: count, mean, min and max (with their items) and the ``top`` items by score.

    Args:
        command: "score" or "compare" (names the lines).
        scored: (item label, score) of every row in the output.
        top: how many of the best items to name.
    Returns:
        Two lines (one when nothing was scored), no trailing newline.
    """
    if not scored:
        return f"rdfast {command}: no scores"
    values = [v for _, v in scored]
    low, high = min(scored, key=lambda s: s[1]), max(scored, key=lambda s: s[1])
    best = sorted(scored, key=lambda s: -s[1])[:top]
    return (f"rdfast {command}: {len(values)} scores, mean {statistics.fmean(values):.4g}, "
            f"min {low[1]:.4g} ({low[0]}), max {high[1]:.4g} ({high[0]})\n"
            f"top {len(best)}: " + ", ".join(f"{label} {value:.4g}" for label, value in best))
