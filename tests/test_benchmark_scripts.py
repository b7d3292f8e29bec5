"""benchmarks/ scripts that RESULTS.md and the README quote numbers from."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method: str, task: str, seed: int, fraction: float, **metrics: float) -> dict:
    return {"method": method, "encoder": "enc", "task": task, "seed": seed, "data_fraction": fraction,
            "metrics": metrics}


def test_seed_table_lists_seeds_in_order_and_reads_each_metric_from_its_task():
    seed_table = _load("seed_table")
    rows = [_row("clip-raw", "segmentation", 1, 1.0, mIoU=0.5, object_mIoU=0.2),
            _row("clip-raw", "segmentation", 0, 1.0, mIoU=0.3, object_mIoU=0.1),
            _row("clip-raw", "segmentation", 0, 0.1, mIoU=0.9, object_mIoU=0.9),   # another fraction: not read
            _row("clip-raw", "depth", 0, 1.0, RMSE=0.8), _row("clip-raw", "depth", 1, 1.0, RMSE=0.6),
            _row("clip-raw", "retrieval", 0, 1.0, mIoU=7.0)]                       # not a dense task: not read
    out = seed_table.table(rows, ["mIoU", "object_mIoU", "RMSE"], 1.0, "seeds")
    assert "| clip-raw | 0.300 / 0.500 = 0.400 | 0.100 / 0.200 = 0.150 | 0.800 / 0.600 = 0.700 |" in out
    out = seed_table.table(rows, ["mIoU"], 1.0, "mean_std")
    assert "| clip-raw | 0.400 ± 0.141 |" in out  # sample std, as the report's


def test_seed_table_agrees_with_the_committed_headline_report():
    """The committed headline's results.json through the script, against the report `qclip report` wrote from it."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed_table.py"),
                          str(ROOT / "benchmarks" / "headline" / "results.json"), "--summary", "mean_std"],
                         capture_output=True, text=True, check=True).stdout
    report = (ROOT / "benchmarks" / "headline" / "report.md").read_text()
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    lines = report.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("| encoder | method | RMSE dep @5%"))
    header, table = cells(lines[start]), lines[start + 2:]  # every fraction's table, best values in **bold**
    col = {"RMSE": header.index("RMSE dep @100%"), "mIoU": header.index("mIoU seg @100%")}
    checked = 0
    for line in out.splitlines()[3:]:  # after the title, header and rule
        method, miou, _, rmse = cells(line)
        report_line = next(x for x in table if re.match(rf"\| \S+ \| {re.escape(method)} \| ", x))
        for got, idx in ((miou, col["mIoU"]), (rmse, col["RMSE"])):
            want_mean, want_std = (float(v) for v in cells(report_line)[idx].strip("*").split(" ± "))
            mean, std = (float(v) for v in got.split(" ± "))
            assert mean == pytest.approx(want_mean, abs=6e-4) and std == pytest.approx(want_std, abs=6e-4), method
            checked += 1
    assert checked == 10  # five methods, two tasks


@pytest.mark.slow
def test_seed_table_names_the_encoders_when_a_study_has_several(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"rows": [{"method": "random", "encoder": "a", "task": "depth", "seed": 0, "data_fraction": 1.0,'
                    ' "metrics": {"RMSE": 1.0}}, {"method": "random", "encoder": "b", "task": "depth", "seed": 0,'
                    ' "data_fraction": 1.0, "metrics": {"RMSE": 1.0}}]}')
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed_table.py"), str(path)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "pick one with --encoder" in done.stderr and "a, b" in done.stderr


@pytest.mark.slow
def test_gpu_check_runs_to_the_end_on_a_machine_without_a_gpu():
    """benchmarks/gpu_check.sh on the CPU (tiny sizes): the fine-tune table (qclip's loop against the plain loop
    measured in the same run), the loader's headroom, sliding-window images/s and the pretraining comparison."""
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHON": sys.executable}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "no CUDA device" in out
    plain = re.search(r"plain PyTorch loop\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+1\.000", out)
    ours = re.search(r"qclip train_head\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)", out)
    assert plain and ours and float(ours.group(2)) == pytest.approx(float(ours.group(1)) / float(plain.group(1)),
                                                                      abs=2e-3)
    assert re.search(r"loader alone: [\d.]+ img/s = [\d.]+x the training rate", out)
    assert re.search(r"sliding-window inference: [\d.]+ img/s", out)
    assert re.search(r"qclip-vit-tiny\s+[\d.]+\s+[\d.]+\s+[\d.]+", out)
