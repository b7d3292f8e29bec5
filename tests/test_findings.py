"""The report's finding: relative gains and the study's direction checked against the spread over seeds."""
from __future__ import annotations

from qclip.report.findings import finding_lines, findings


def _rows(method: str, task: str, values: list[float], fraction: float = 1.0) -> list[dict]:
    metric = "mIoU" if task == "segmentation" else "RMSE"
    return [{"encoder": "e", "method": method, "task": task, "data_fraction": fraction, "seed": s,
             "metrics": {metric: v}} for s, v in enumerate(values)]


def test_direction_needs_a_margin_over_the_seed_spread():
    rows = (_rows("clip-synthetic", "segmentation", [0.50, 0.52]) + _rows("clip-raw", "segmentation", [0.40, 0.41])
            + _rows("mim", "segmentation", [0.45, 0.55])  # mean 0.50 +- 0.07: synthetic is not clearly better
            + _rows("clip-synthetic", "depth", [1.0, 1.1]) + _rows("clip-raw", "depth", [1.05, 1.0]))
    f = {x["task"]: x for x in findings(rows)}
    assert f["segmentation"]["beats_raw"] is True and f["segmentation"]["beats_mim"] is False
    assert f["depth"]["beats_raw"] is False and f["depth"]["beats_mim"] is None  # no mim rows for depth
    assert abs(f["segmentation"]["synthetic_vs_raw_pct"] - (0.51 - 0.405) / 0.405 * 100) < 1e-9
    last = finding_lines(list(f.values()))[-1]
    assert "in 1 of 3 checks" in last and "e depth: synthetic beats raw" in last


def test_one_seed_claims_no_margin():
    rows = _rows("clip-synthetic", "segmentation", [0.50]) + _rows("clip-raw", "segmentation", [0.40])
    last = finding_lines(findings(rows))[-1]
    assert last.startswith("With one seed the paper's direction holds in 1 of 1 checks") and "no margin" in last
