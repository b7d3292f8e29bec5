"""What a new user meets in their first hour: messages that say what is there, help that fits the command, no
warnings from plots with nothing to show, and no data efficiency read from a curve that does not improve."""
from __future__ import annotations

import warnings

import pytest


def test_a_caption_id_the_dataset_lacks_lists_the_ids_it_holds(tmp_path):
    from qclip.config import load_config
    from qclip.data.shards import ShardWriter
    from qclip.train.pretrain import pretrain
    from qclip.train.shard_dataset import TrainDataError
    from test_shards import make  # captions.synthetic under the id "coca"

    with ShardWriter(tmp_path / "ds", prefix="t", shard_size=8) as w:
        for i in range(8):
            w.write(make(i, dense=False))
        w.close({"name": "t"})
    cfg = load_config(None, ["pretrain.model=qclip-vit-tiny", "pretrain.caption_policy=synthetic:tiny",
                             "pretrain.batch_size=4", "pretrain.steps=1", "pretrain.workers=0"])
    with pytest.raises(TrainDataError, match=r"no synthetic captions with id 'tiny'.*its ids: coca "
                                             r"\(e.g. pretrain.caption_policy=synthetic:coca\)"):
        pretrain(cfg, tmp_path / "ds", tmp_path / "run", progress=False)


def test_each_commands_help_gives_its_own_override_example(capsys):
    from qclip.cli import build_parser

    for command, own, other in (("pretrain", "pretrain.batch_size=64", "world.n_pool"),
                                ("transfer", "transfer.steps=1000", "world.n_pool"),
                                ("world", "world.n_pool=2000", "pretrain.batch_size")):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        usage = capsys.readouterr().out.split("config keys")[0]
        assert f"e.g. {own}" in usage and other not in usage, usage[-400:]


def test_caption_stats_without_scores_draw_without_a_warning(world_dir, tmp_path):
    from qclip.captions.stats import caption_stats, write_stats

    st = caption_stats(world_dir / "curated", 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        write_stats(st, tmp_path / "stats")


def _rows(syn: dict[float, float], raw: dict[float, float]) -> list[dict]:
    return [{"method": m, "encoder": "e", "task": "depth", "seed": s, "data_fraction": f,
             "metrics": {"RMSE": v + 0.001 * s}}
            for m, curve in (("clip-synthetic", syn), ("clip-raw", raw)) for f, v in curve.items() for s in range(2)]


def test_no_data_efficiency_is_read_from_a_curve_that_gets_worse_with_more_labels():
    from qclip.report.findings import data_efficiency, finding_lines, findings

    # a 20-step run: clip-synthetic's RMSE rises with more labels, yet sits below clip-raw's at 100%
    worse = data_efficiency(_rows({0.05: 0.70, 0.5: 0.74, 1.0: 0.78}, {0.05: 0.95, 1.0: 0.90}))[0]
    assert worse["ratio"] is None and worse["no_label_trend"]
    text = "\n".join(finding_lines(findings(_rows({0.05: 0.70, 0.5: 0.74, 1.0: 0.78}, {0.05: 0.95, 1.0: 0.90}))))
    line = next(x for x in text.splitlines() if "data efficiency" in x)
    assert "data efficiency not read" in line and "at least" not in line
    better = data_efficiency(_rows({0.05: 0.95, 0.5: 0.85, 1.0: 0.80}, {0.05: 1.0, 1.0: 0.90}))[0]
    assert better["ratio"] and "no_label_trend" not in better


def test_a_warm_up_longer_than_the_schedule_is_called_out():
    """A fine-tune recipe cut to a short run by transfer.steps alone keeps its 1,500 warm-up steps: the lr never
    reaches transfer.lr and the head learns nothing (seen on a user's ADE20k run at 200 steps: mIoU 0.0005)."""
    from qclip.config import load_config
    from qclip.transfer.run import schedule_warning

    short = load_config("configs/transfer_ade20k_upernet.yaml", ["transfer.steps=200"]).transfer
    assert "transfer.warmup_steps=1500 >= transfer.steps=200" in schedule_warning(short)
    assert schedule_warning(load_config("configs/transfer_ade20k_upernet.yaml").transfer) is None
    assert schedule_warning(load_config("configs/demo.yaml").transfer) is None
