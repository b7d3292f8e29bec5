"""The Python API example runs as written (tiny settings)."""
import importlib.util
import math
from pathlib import Path


def test_pipeline_example_runs_every_stage(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the example reads configs/demo.yaml, as from the checkout's root
    spec = importlib.util.spec_from_file_location("pipeline_example", root / "examples" / "pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.main(tmp_path / "api", mod.TINY)
    assert set(results) == {"raw", "synthetic"}
    for r in results.values():
        assert 0 <= r["mIoU"] <= 1 and 0 <= r["R@1"] <= 1 and not math.isnan(r["mIoU"])
    assert (tmp_path / "api" / "clip-synthetic" / "model" / "open_clip_config.json").is_file()
    assert (tmp_path / "api" / "seg-raw" / "metrics.json").is_file()
