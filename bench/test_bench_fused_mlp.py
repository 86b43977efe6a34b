"""bench/fused_mlp.py's --smoke run: its schema, and that the scores it times agree (fp32, log P within 1e-5).
Nothing here asserts timings."""
import json

from fused_mlp import main  # bench/fused_mlp.py (pytest puts this directory on sys.path)


def test_smoke_writes_the_schema_and_the_two_paths_agree(tmp_path):
    result = main(["--smoke", "--json", str(tmp_path / "out.json")])
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for key in ("machine", "threads", "load_average", "versions", "git_commit", "date"):
        assert key in saved
    assert [r["scenario"] for r in saved["rows"]] == ["ref16", "point64"]
    for row in saved["rows"]:
        assert row["items"] == 16 and row["fused_items_per_s"] > 0 and row["unfused_items_per_s"] > 0
        assert row["max_abs_dlogp"] <= 1e-5, row  # float32: the fused activations are within rounding
