"""``rdfast score`` / ``compare`` as an attacker and a new user would run them: outputs are never clobbered,
``--resume`` is by content, undecodable lines are one bad line, NaN never reaches the output, and user
errors are one line with exit code 2 before any model is loaded.

One tiny model for the module: ``rdfast.cli._load`` is replaced by the cached ``tiny:qwen2_vl`` (the ``loads``
fixture of conftest counts loads, so a test can say that a refusal came before the load). Only the SIGKILL test
runs a subprocess.
"""
import fcntl
import io
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from conftest import load_rm, user_error, write_images
from rdfast.cli import main
from rdfast.errors import InputError
from rdfast.score_jsonl import ScoreJob, score_file
from rdfast.train.data import load_preferences

PROMPTS = ["a red circle", "two dogs", "a tree at night", "a blue square"]


def _items(tmp_path, n, seed, name="items.jsonl", extra=None):
    names = write_images(tmp_path, n, seed)
    rows = [{"prompt": PROMPTS[k % len(PROMPTS)], "image": im, **(extra(k) if extra else {})}
            for k, im in enumerate(names)]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _seed(gen):
    return int(torch.randint(0, 10_000, (1,), generator=gen))


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _expected(tmp_path, rows, instruction=None):
    """Each row scored alone through the Python API (an independent reference for the job's batching)."""
    rm = load_rm("qwen2_vl")
    return torch.cat([rm.score(images=[Image.open(tmp_path / r["image"])], prompts=[r["prompt"]],
                               instruction=r.get("instruction", instruction)) for r in rows])


def _score(*args):
    return main(["score", "--model", "tiny:qwen2_vl", "--device", "cpu", *map(str, args)])


# ---- outputs are never clobbered ---------------------------------------------------------------------------
def test_output_that_is_the_input_is_refused_before_loading(tmp_path, gen, loads, capsys, monkeypatch):
    src, _ = _items(tmp_path, 2, _seed(gen))
    before = src.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    for output in (src, tmp_path / "link.jsonl", "items.jsonl", "./sub/../items.jsonl"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        for flags in ([], ["--resume"], ["--overwrite"]):
            err = user_error(capsys, "score", "--model", "tiny:qwen2_vl", "--input", src, "--output", output, *flags)
            assert "is the input" in err
    assert src.read_bytes() == before and loads == []


def test_existing_output_is_refused_without_resume_or_overwrite(tmp_path, gen, loads, capsys):
    src, rows = _items(tmp_path, 2, _seed(gen))
    out = tmp_path / "scores.jsonl"
    out.write_text("precious\n")
    err = user_error(capsys, "score", "--model", "tiny:qwen2_vl", "--input", src, "--output", out)
    assert "exists" in err and "--resume" in err and "--overwrite" in err
    assert out.read_text() == "precious\n" and loads == []
    _score("--input", src, "--output", out, "--overwrite")
    torch.testing.assert_close(torch.tensor([r["score"] for r in _rows(out)]), _expected(tmp_path, rows),
                               atol=1e-7, rtol=1e-5)


def test_second_writer_of_one_output_is_refused(tmp_path, gen, loads, capsys):
    src, _ = _items(tmp_path, 2, _seed(gen))
    out = tmp_path / "scores.jsonl"
    out.write_text("")
    with open(out, "a") as held:  # another job holds the output
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for flags in (["--resume"], ["--overwrite"]):
            err = user_error(capsys, "score", "--model", "tiny:qwen2_vl", "--input", src, "--output", out, *flags)
            assert "another job" in err
    assert out.read_text() == "" and loads == []
    # two jobs in one process: the second is refused while the first holds the output
    log = io.StringIO()
    rm = load_rm("qwen2_vl")
    first = ScoreJob("score", str(src), str(out), overwrite=True)
    with pytest.raises(InputError, match="another job"):
        score_file(rm, "score", str(src), str(out), resume=True, log=log)
    first.close()
    assert score_file(rm, "score", str(src), str(out), resume=True, log=log).scored == 2


# A stand-in model for the SIGKILL test: its subprocess then needs no transformers (seconds, not ten).
SLOW_MODEL = """
import time, torch
class SlowModel:
    def score(self, images, prompts, instruction=None):
        time.sleep(0.02)
        return torch.tensor([sum(map(ord, p)) / 1e4 for p in prompts])
"""


def test_resume_after_sigkill(tmp_path, gen):
    names = write_images(tmp_path, 4, _seed(gen))
    rows = [{"prompt": f"{PROMPTS[k % 4]} {k}", "image": names[k % 4]} for k in range(60)]
    src = tmp_path / "items.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    script = SLOW_MODEL + "import sys\nfrom rdfast.score_jsonl import score_file\n" \
        "score_file(SlowModel(), 'score', sys.argv[1], sys.argv[2], batch_size=1)\n"
    job = subprocess.Popen([sys.executable, "-c", script, str(src), str(out)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.stat().st_size == 0):
            time.sleep(0.005)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait()
    assert job.returncode == -signal.SIGKILL
    written = out.read_bytes().count(b"\n")
    assert 0 < written < len(rows)
    scope = {}
    exec(SLOW_MODEL, scope)
    summary = score_file(scope["SlowModel"](), "score", str(src), str(out), resume=True, batch_size=8, log=io.StringIO())
    assert summary.kept + summary.scored == len(rows) and summary.kept >= written
    got = _rows(out)
    assert [r["line"] for r in got] == list(range(1, len(rows) + 1))
    assert [r["score"] for r in got] == torch.tensor([sum(map(ord, r["prompt"])) / 1e4 for r in rows]).tolist()


def test_resume_repairs_a_last_line_that_lost_only_its_newline(tmp_path, gen, loads):
    src, rows = _items(tmp_path, 5, _seed(gen))
    out = tmp_path / "scores.jsonl"
    _score("--input", src, "--output", out)
    full = out.read_text().splitlines(keepends=True)
    out.write_text("".join(full[:2]) + full[2].rstrip("\n"))  # killed between the record and its newline
    _score("--input", src, "--output", out, "--resume")
    got = _rows(out)  # every line is one record
    assert [r["line"] for r in got] == [1, 2, 3, 4, 5]
    torch.testing.assert_close(torch.tensor([r["score"] for r in got]), _expected(tmp_path, rows), atol=1e-7, rtol=1e-5)


def test_resume_is_by_content_after_the_input_was_edited(tmp_path, gen, loads):
    src, rows = _items(tmp_path, 5, _seed(gen))
    out = tmp_path / "scores.jsonl"
    _score("--input", src, "--output", out)
    # a line inserted at the top, one prompt changed, one line deleted, one line duplicated
    edited = [{"prompt": "a new first line", "image": rows[4]["image"]}, rows[0], {**rows[1], "prompt": "changed"},
              rows[3], rows[4], rows[4]]
    src.write_text("".join(json.dumps(r) + "\n" for r in edited))
    _score("--input", src, "--output", out, "--resume")
    got = _rows(out)
    assert [r["line"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["prompt"] for r in got] == [r["prompt"] for r in edited]
    torch.testing.assert_close(torch.tensor([r["score"] for r in got]), _expected(tmp_path, edited),
                               atol=1e-7, rtol=1e-5)


def test_resume_uses_an_id_field_as_the_key(tmp_path, gen, loads):
    src, rows = _items(tmp_path, 4, _seed(gen), extra=lambda k: {"id": f"item-{k}"})
    out = tmp_path / "scores.jsonl"
    _score("--input", src, "--output", out)
    kept = out.read_text().splitlines(keepends=True)
    out.write_text(kept[2] + kept[0])  # rows for item-2 and item-0 survive, in another order
    src.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))  # and the input was reordered
    log = io.StringIO()
    summary = score_file(load_rm("qwen2_vl"), "score", str(src), str(out), resume=True, log=log)
    assert (summary.scored, summary.kept) == (2, 2)
    got = _rows(out)
    assert [r["id"] for r in got] == ["item-3", "item-2", "item-1", "item-0"] and [r["line"] for r in got] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor([r["score"] for r in got]), _expected(tmp_path, rows[::-1]),
                               atol=1e-7, rtol=1e-5)


def test_resume_of_an_output_in_the_previous_format(tmp_path, gen, loads):
    """Rows written before content keys (input fields, "line", "score") are kept where they still match
    their input line and rescored where the input changed."""
    src, rows = _items(tmp_path, 4, _seed(gen))
    out = tmp_path / "scores.jsonl"
    old = [{**r, "line": k + 1, "score": 0.25} for k, r in enumerate(rows[:3])]  # an older rdfast's rows
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    src.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], {**rows[1], "prompt": "edited"}, rows[2], rows[3]]))
    log = io.StringIO()
    summary = score_file(load_rm("qwen2_vl"), "score", str(src), str(out), resume=True, log=log)
    assert (summary.scored, summary.kept) == (2, 2)
    got = _rows(out)
    assert [r["line"] for r in got] == [1, 2, 3, 4] and [r["prompt"] for r in got][1] == "edited"
    assert [r["score"] for r in got][0] == 0.25 and [r["score"] for r in got][2] == 0.25  # kept, not rescored
    fresh = _expected(tmp_path, [{**rows[1], "prompt": "edited"}, rows[3]])
    torch.testing.assert_close(torch.tensor([got[1]["score"], got[3]["score"]]), fresh, atol=1e-7, rtol=1e-5)


# ---- encoding --------------------------------------------------------------------------------------------
def _hostile_file(tmp_path, gen, label=None):
    names = write_images(tmp_path, 3, _seed(gen))
    extra = {"label": label} if label is not None else {}
    if label is not None:
        good = [{"prompt": "a red circle", "image1": names[0], "image2": names[1], **extra},
                {"prompt": "two dogs", "image1": names[1], "image2": names[2], **extra}]
    else:
        good = [{"prompt": "a red circle", "image": names[0]}, {"prompt": "two dogs", "image": names[1]}]
    lines = [
        b"\xef\xbb\xbf" + json.dumps(good[0]).encode(),  # a byte-order mark before valid line 1
        json.dumps({**good[1], "prompt": "caf"}).encode()[:-2] + b"\xe9\"}",  # latin-1 byte: not UTF-8
        json.dumps({**good[1], "prompt": "bad \ud800 text"}).encode(),  # a lone surrogate, escaped
        json.dumps({**good[1], "note": float("nan")}).encode(),  # NaN is not JSON
        json.dumps({**good[1], "prompt": "caf\u00e9 \u2603"}, ensure_ascii=False).encode(),  # real UTF-8
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


def test_bom_bad_bytes_and_lone_surrogates_are_one_bad_line_each(tmp_path, gen, loads, capsys):
    src = _hostile_file(tmp_path, gen)
    out = tmp_path / "scores.jsonl"
    _score("--input", src, "--output", out)
    err = capsys.readouterr().err
    got = _rows(out)
    assert [r["line"] for r in got] == [1, 5] and got[1]["prompt"] == "caf\u00e9 \u2603"
    for number, why in [(2, "UTF-8"), (3, "surrogate"), (4, "NaN")]:
        assert f"hostile.jsonl:{number}: skipped:" in err and why in err
    torch.testing.assert_close(torch.tensor([r["score"] for r in got]), _expected(tmp_path, got), atol=1e-7, rtol=1e-5)


def test_load_preferences_reports_undecodable_lines_and_keeps_the_rest(tmp_path, gen):
    path = _hostile_file(tmp_path, gen, label=1)
    log = io.StringIO()
    records = load_preferences(path, log=log)
    assert [r.line for r in records] == [1, 5] and records[1].prompt == "caf\u00e9 \u2603"
    for number in (2, 3, 4):
        assert f"hostile.jsonl:{number}: skipped:" in log.getvalue()


# ---- never NaN in output ------------------------------------------------------------------------------------
class _NaNOnSecond:
    """A reward model whose score for the second prompt of every call is NaN (as broken weights give)."""

    def __init__(self, rm):
        self.rm = rm

    def score(self, **kwargs):
        scores = self.rm.score(**kwargs).clone()
        if len(scores) > 1:
            scores[1] = float("nan")
        return scores


def test_a_non_finite_score_is_reported_never_written(tmp_path, gen):
    src, rows = _items(tmp_path, 3, _seed(gen))
    out = tmp_path / "scores.jsonl"
    log = io.StringIO()
    summary = score_file(_NaNOnSecond(load_rm("qwen2_vl")), "score", str(src), str(out), batch_size=4, log=log)
    text = out.read_text()
    assert "NaN" not in text and summary.scored == 2 and summary.skipped == 1
    got = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in output")) for line in text.splitlines()]
    assert [r["line"] for r in got] == [1, 3] and "items.jsonl:2: skipped: non-finite score" in log.getvalue()


# ---- CLI ---------------------------------------------------------------------------------------------------
def test_user_errors_are_one_line_exit_2_before_loading(tmp_path, gen, loads, capsys):
    src, _ = _items(tmp_path, 2, _seed(gen))
    model = ["--model", "tiny:qwen2_vl"]
    cases = [
        (["score", *model, "--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o.jsonl"], "nope.jsonl"),
        (["score", *model, "--input", tmp_path, "--output", tmp_path / "o.jsonl"], "folder"),
        (["score", *model, "--input", src, "--output", tmp_path / "no" / "o.jsonl"], "no such folder"),
        (["score", *model, "--input", src, "--output", tmp_path], "folder"),
        (["compare", *model, "--input", src, "--output", tmp_path / "o.jsonl"], "image1"),
        (["score", *model, "--input", src, "--output", tmp_path / "o.jsonl", "--batch-size", "0"], "--batch-size"),
        (["score", *model, "--input", src, "--output", tmp_path / "o.jsonl", "--device", "nonsense"], "--device"),
    ]
    if not torch.cuda.is_available():
        cases.append((["score", *model, "--input", src, "--output", tmp_path / "o.jsonl", "--device", "cuda"], "CUDA"))
    for argv, what in cases:
        assert what in user_error(capsys, *argv), argv
    assert loads == [] and not (tmp_path / "o.jsonl").exists()


def test_debug_shows_the_traceback(tmp_path, loads):
    with pytest.raises(InputError, match="nope.jsonl"):
        main(["--debug", "score", "--model", "tiny:qwen2_vl", "--input", str(tmp_path / "nope.jsonl"),
              "--output", str(tmp_path / "o.jsonl")])


def test_a_run_where_every_line_was_bad_exits_1(tmp_path, gen, loads, capsys):
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"prompt": p, "image": "missing.png"}) + "\n"
                                                  for p in PROMPTS))
    with pytest.raises(SystemExit) as exit_info:
        _score("--input", tmp_path / "items.jsonl", "--output", tmp_path / "o.jsonl")
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and "wrote" not in captured.out
    assert "4 of 4 lines" in captured.err and "Traceback" not in captured.err


def test_progress_bar_counts_skipped_lines_and_messages_stay_off_it(tmp_path, gen):
    src, rows = _items(tmp_path, 4, _seed(gen))
    lines = src.read_text().splitlines()
    lines[1:1] = ["{not json", json.dumps({"prompt": "gone", "image": "missing.png"})]
    src.write_text("\n".join(lines) + "\n")
    log = io.StringIO()
    score_file(load_rm("qwen2_vl"), "score", str(src), str(tmp_path / "o.jsonl"), batch_size=2, log=log)
    text = log.getvalue()
    assert "6/6" in text and "100%" in text
    for number in (2, 3):
        at = text.index(f"{src}:{number}: skipped")
        assert at == 0 or text[at - 1] in "\r\n", repr(text[max(0, at - 60):at + 20])


def test_a_per_line_instruction_is_honoured(tmp_path, gen, loads):
    src, rows = _items(tmp_path, 4, _seed(gen), extra=lambda k: {"instruction": "quality"} if k % 2 else {})
    out = tmp_path / "scores.jsonl"
    _score("--input", src, "--output", out, "--instruction", "alignment")
    got = _rows(out)
    assert [r.get("instruction") for r in got] == ["alignment", "quality", "alignment", "quality"]  # the one used
    expected = _expected(tmp_path, rows, instruction="alignment")
    torch.testing.assert_close(torch.tensor([r["score"] for r in got]), expected, atol=1e-7, rtol=1e-5)
    ignored = _expected(tmp_path, [{k: v for k, v in r.items() if k != "instruction"} for r in rows], "alignment")
    assert not torch.allclose(expected, ignored)  # the instruction changes this model's score


def test_compare_honours_a_per_line_instruction(tmp_path, gen, loads):
    names = write_images(tmp_path, 3, _seed(gen))
    rows = [{"prompt": "a red circle", "image1": names[0], "image2": names[1], "instruction": "quality"},
            {"prompt": "two dogs", "image1": names[1], "image2": names[2]}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    main(["compare", "--model", "tiny:qwen2_vl", "--input", str(tmp_path / "pairs.jsonl"), "--output", str(out)])
    rm = load_rm("qwen2_vl")
    expected = torch.cat([rm.compare(images1=[Image.open(tmp_path / r["image1"])],
                                     images2=[Image.open(tmp_path / r["image2"])], prompts=[r["prompt"]],
                                     instruction=r.get("instruction")) for r in rows])
    torch.testing.assert_close(torch.tensor([r["p_image2_better"] for r in _rows(out)]), expected, atol=1e-7, rtol=1e-5)
