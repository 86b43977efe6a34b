"""Preference data: validation with line numbers (skip or strict), and the batches each paradigm consumes."""
import io
import json

import pytest
import torch

from conftest import load_rm, write_images
from rdfast.testing import random_images
from rdfast.train import (
    Collator,
    DataError,
    PreferenceRecord,
    load_preferences,
    parse_label,
)
from rdfast.train.batches import IGNORE


def bad_file(tmp_path, seed):
    """A JSONL with good lines and every kind of bad line; returns (path, good line numbers, bad: {line: why})."""
    names = write_images(tmp_path, 3, seed)
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    good = {"prompt": "two red circles", "image1": names[0], "image2": names[1], "label": 2}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "image2": "missing.png"}),
        json.dumps({**good, "label": 3}),
        json.dumps({**good, "prompt": "  "}),
        "",  # blank lines are ignored, but still counted
        json.dumps({**good, "label": "tie", "instruction": "quality", "reason": "both match", "id": 7}),
        json.dumps({k: v for k, v in good.items() if k != "label"}),
        json.dumps({**good, "image1": "corrupt.png"}),
        json.dumps({**good, "label": True}),
        json.dumps({**good, "label": "1"}),
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    bad = {2: "Expecting", 3: "not found", 4: "unknown label", 5: "non-empty", 8: "missing field 'label'",
           9: "cannot read image", 10: "unknown label"}
    return path, [1, 7, 11], bad


def test_bad_lines_are_reported_with_line_numbers_and_skipped(tmp_path, gen):
    path, good_lines, bad = bad_file(tmp_path, int(torch.randint(0, 10_000, (1,), generator=gen)))
    log = io.StringIO()
    records = load_preferences(path, log=log)
    assert [r.line for r in records] == good_lines
    assert [r.label for r in records] == [2, "tie", 1]
    assert records[1].instruction == "quality" and records[1].reason == "both match" and records[1].extra == {"id": 7}
    assert records[0].image1 == str(tmp_path / "im0.png")  # relative to the JSONL file
    report = log.getvalue().splitlines()
    assert len(report) == len(bad)
    for (number, why), line in zip(sorted(bad.items()), report):
        assert line.startswith(f"{path}:{number}: skipped:") and why in line, line


def test_strict_reports_every_bad_line_then_stops(tmp_path, gen):
    path, _, bad = bad_file(tmp_path, int(torch.randint(0, 10_000, (1,), generator=gen)))
    with pytest.raises(DataError) as info:
        load_preferences(path, strict=True, log=io.StringIO())
    assert [n for n, _ in info.value.errors] == sorted(bad)
    assert f"{path}:3:" in str(info.value)


def test_labels():
    assert [parse_label(x) for x in (1, 2, "2", "TIE", " tie ")] == [1, 2, 2, "tie", "tie"]
    for bad in (0, 3, 1.0, "yes", None, False):
        with pytest.raises(ValueError, match="unknown label"):
            parse_label(bad)
    with pytest.raises(ValueError, match="prompt"):
        PreferenceRecord("", "a.png", "b.png", 1)


def records(n, seed, reasons=False):
    ims = random_images(2 * n, sizes=((56, 56), (84, 56)), seed=seed)
    labels = [1, 2, "tie"]
    return [PreferenceRecord(f"prompt {k} with a red circle", ims[2 * k], ims[2 * k + 1], labels[k % 3],
                             reason=f"image {1 + k % 2} shows the red circle" if reasons else None, line=k + 1)
            for k in range(n)]


def test_pairwise_batch_has_both_orders(gen):
    rm = load_rm("qwen2_vl")
    recs = records(3, int(torch.randint(0, 10_000, (1,), generator=gen)))
    batch = Collator(rm, "pairwise")(recs)
    assert batch.target.tolist() == [0.0, 1.0, 1.0, 0.0, 0.5, 0.5]
    # row 2k+1 is row 2k with the two images swapped
    fwd = rm.build_inputs([recs[0].prompt], [recs[0].image1], [recs[0].image2])
    rev = rm.build_inputs([recs[0].prompt], [recs[0].image2], [recs[0].image1])
    for row, ref in ((0, fwd), (1, rev)):
        ids = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()]
        assert torch.equal(ids, ref["input_ids"][0])
    one = Collator(rm, "pairwise", both_orders=False)(recs)
    assert one.target.tolist() == [0.0, 1.0, 0.5] and one.units("skip") == 2


@pytest.mark.parametrize("cot_format", ["decision_first", "reasons_first"])
def test_cot_batch_labels(cot_format, gen):
    rm = load_rm("qwen2_vl")
    recs = records(3, int(torch.randint(0, 10_000, (1,), generator=gen)), reasons=True)
    recs[1].reason = None  # decision only
    batch = Collator(rm, "cot", cot_format=cot_format)(recs)
    tok = rm.tokenizer
    for row, rec in enumerate(recs):
        labelled = batch.labels[row][batch.labels[row] != IGNORE].tolist()
        decision = "no" if rec.label == 1 else "yes"
        text = tok.decode(labelled)
        if rec.reason is None:
            expected = f"{decision}<|im_end|>"
        elif cot_format == "decision_first":
            expected = f"{decision}\n{rec.reason}<|im_end|>"
        else:
            expected = f"{rec.reason}\n{decision}<|im_end|>"
        assert text == expected
        assert batch.labels[row, batch.decision_pos[row]].item() == (rm.no_token_id if rec.label == 1 else rm.yes_token_id)
        # the decision is predicted where the scorer reads (decision first: the end of the scoring prompt)
        prompt_len = len(rm.build_inputs([rec.prompt], [rec.image1], [rec.image2])["input_ids"][0])
        if cot_format == "decision_first" or rec.reason is None:
            assert batch.decision_pos[row].item() == prompt_len
    assert batch.units("soft") == int((batch.labels != IGNORE).sum())


def test_too_long_records_are_skipped_with_their_line(gen):
    rm = load_rm("qwen2_vl")
    recs = records(3, int(torch.randint(0, 10_000, (1,), generator=gen)))
    recs[1].prompt = "yes " * 5000
    log = io.StringIO()
    batch = Collator(rm, "pointwise", log=log)(recs)
    assert batch.records == [recs[0], recs[2]] and batch.inputs["input_ids"].shape[0] == 4
    assert "<memory>:2: skipped:" in log.getvalue() and "tokens long" in log.getvalue()
    with pytest.raises(ValueError, match="<memory>:2: .*tokens long"):
        Collator(rm, "pointwise", strict=True, log=io.StringIO())(recs)


def test_dataset_and_collator_in_a_dataloader(tmp_path, gen):
    from torch.utils.data import DataLoader

    from rdfast.train import PreferenceDataset

    path, good_lines, _ = bad_file(tmp_path, seed_of_gen(gen))
    data = PreferenceDataset(path, log=io.StringIO())
    assert len(data) == len(good_lines)
    batches = list(DataLoader(data, batch_size=2, collate_fn=Collator(load_rm("qwen2_vl"), "pointwise")))
    assert [b.target.tolist() for b in batches] == [[1.0, 0.5], [0.0]]
    assert [b.inputs["input_ids"].shape[0] for b in batches] == [4, 2]


def seed_of_gen(gen):
    return int(torch.randint(0, 10_000, (1,), generator=gen))
