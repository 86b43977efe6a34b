"""The shared result schema (bench/common.py): every bench script records the same environment fields, and the
per-bench CSV history widens its header without losing earlier rows."""
import csv
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import append_csv, environment, flat_rows  # noqa: E402


def test_environment_has_every_schema_field():
    env = environment()
    for key in ("machine", "device_type", "threads", "cpu_count", "load_average", "versions", "git_commit", "date"):
        assert key in env, key
    assert env["versions"]["torch"]
    assert env["threads"] >= 1
    datetime.datetime.fromisoformat(env["date"])  # parseable, with its time zone


def test_append_csv_widens_header_and_keeps_history(tmp_path):
    path = tmp_path / "hist.csv"
    append_csv(path, [{"a": 1, "b": 2}])
    append_csv(path, [{"a": 3, "c": {"x": 1}}])  # a new key: the header grows, the first row keeps a blank
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["a"] for r in rows] == ["1", "3"]
    assert rows[0]["c"] == "" and rows[1]["b"] == ""
    assert rows[1]["c"] == '{"x": 1}'
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_flat_rows_put_environment_beside_each_row():
    result = {"machine": "m", "versions": {"torch": "2.13.0"}, "rows": [{"method": "x"}, {"method": "y"}]}
    rows = flat_rows(result, "rows")
    assert rows == [{"machine": "m", "version_torch": "2.13.0", "method": "x"},
                    {"machine": "m", "version_torch": "2.13.0", "method": "y"}]
