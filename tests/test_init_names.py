"""`nnctl init` on headers whose names a naive spec cannot hold: the written spec loads and trains,
or init refuses with exit 2 and writes nothing."""
from __future__ import annotations

import csv
import io

import pytest
import yaml

from helpers import run, run_json


def _csv(header, rows=12):
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for r in range(rows):
        writer.writerow([r % 3, r % 5, (r % 2) * 1.5][: len(header)] + [r % 2] * (len(header) - 3))
    return text.getvalue()


ODD_NAMES = ["a\nb", "a\rb", "p\u2028q", "r\x85s", "\x1b[31m", "1e3", "null", "yes", ".inf", "#c", "x: y", "[z]", "'q'", '"dq"', "a # b", "é"]


@pytest.mark.parametrize("name", ODD_NAMES, ids=[repr(n) for n in ODD_NAMES])
@pytest.mark.parametrize("role", ["input", "target"])
def test_the_written_spec_holds_any_name_and_trains(tmp_path, name, role):
    header = [name, "other", "t"] if role == "input" else ["in1", "in2", name]
    data = tmp_path / "data.csv"
    data.write_text(_csv(header), newline="")
    target = "t" if role == "input" else name
    facts = run_json("init", data, "--target", target, "--out", tmp_path / "s.yaml", "--task", "regression")
    spec = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert spec["data"]["inputs"] == {"x": facts["inputs"]} == {"x": header[:2]} and spec["data"]["targets"] == [target]
    trained = run_json("train", tmp_path / "s.yaml", "--epochs", 1, cwd=tmp_path)
    assert trained["epochs"] == 1 and trained["train_samples"] == 10


def test_a_line_break_in_a_name_stays_inside_its_comment(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text(_csv(["in1", "in2", "y\nloss: mse"]), newline="")
    run_json("init", data, "--target", "y\nloss: mse", "--out", tmp_path / "s.yaml")
    first = (tmp_path / "s.yaml").read_text().splitlines()[0]
    assert first == "# Starter spec written by `nnctl init data.csv --target y\\nloss: mse` (regression)."


def test_a_doubled_header_name_is_refused_naming_both_columns(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,b,a,y\n" + "".join(f"{i},{i % 3},{i % 5},{i % 2}\n" for i in range(10)))
    result = run("init", data, "--target", "y", cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr == f"Error (data error): {data}:1:3: expected distinct column names in the header, received 'a' as columns 1 and 3; rename one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_an_unnamed_column_is_skipped_and_noted(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text(",a,b,y\n" + "".join(f"{i},{i % 3},{i % 5},{i * 0.5}\n" for i in range(10)))  # pandas' index column
    facts = run_json("init", data, "--target", "y", "--out", tmp_path / "s.yaml")
    assert facts["inputs"] == ["a", "b"] and facts["skipped"] == []
    assert "# Skipped (no name in the header): column 1.\n" in (tmp_path / "s.yaml").read_text()
    assert run_json("train", tmp_path / "s.yaml", "--epochs", 1, cwd=tmp_path)["epochs"] == 1
    refused = run("init", data, "--target", "", "--out", tmp_path / "t.yaml")
    assert refused.exit_code == 2 and "--target: expected a column of the header (a, b, y), received ''" in refused.stderr
    assert not (tmp_path / "t.yaml").exists()


def test_a_data_path_with_a_line_break_character_reads_back(tmp_path):
    folder = tmp_path / "we\u2028ird\x85"
    folder.mkdir()
    data = folder / "da\nta.csv"
    data.write_text(_csv(["in1", "in2", "y"]))
    facts = run_json("init", data, "--target", "y", "--out", tmp_path / "s.yaml")
    assert facts["data"] == "we\u2028ird\x85/da\nta.csv"
    assert run_json("train", tmp_path / "s.yaml", "--epochs", 1, cwd=tmp_path)["train_samples"] == 10
