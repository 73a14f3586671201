"""The shared report helpers: Markdown tables and "value [CI]" cells as benchmark, evaluate and paper write them."""

from __future__ import annotations

import json
import math

import pytest

from spatialscore.report import ci_cell, markdown_table, write_json


def test_markdown_table_right_aligns_the_numeric_columns_and_refuses_ragged_rows():
    table = markdown_table(["policy", "strict", "extra"], [["sft", "0.150", "0.360"], ["rl", "0.550", "0.200"]])
    assert table.splitlines() == [
        "| policy | strict | extra |",
        "| --- | ---: | ---: |",
        "| sft | 0.150 | 0.360 |",
        "| rl | 0.550 | 0.200 |",
    ]
    assert markdown_table(["a", "b"], [], numeric_from=2).splitlines()[1] == "| --- | --- |"
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        markdown_table(["a", "b"], [["x"]])


def test_ci_cell_formats_value_and_interval_and_leaves_out_what_is_missing():
    assert ci_cell(0.8125, 0.77, 0.85) == "0.812 [0.770, 0.850]"
    assert ci_cell(0.4, 0.32, 0.48, signed=True) == "+0.400 [+0.320, +0.480]"
    assert ci_cell(-0.16, -0.2, -0.1, signed=True) == "-0.160 [-0.200, -0.100]"
    assert ci_cell(0.5) == ci_cell(0.5, math.nan, math.nan) == ci_cell(0.5, None, 0.6) == "0.500"
    assert ci_cell(None) == "–"


def test_write_json_round_trips(tmp_path):
    value = {"a": [1, 2.5], "b": {"c": None}}
    write_json(tmp_path / "r.json", value)
    text = (tmp_path / "r.json").read_text(encoding="utf-8")
    assert json.loads(text) == value and text.endswith("}\n")
