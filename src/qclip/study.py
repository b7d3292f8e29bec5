"""`qclip run`: the quality-captions study end to end, from one config.

world -> captioner (curated split) -> recaption the pool -> pretrain every (encoder, method) on the pool with
the same budget (per encoder: `study.encoder_train`) -> transfer each encoder to segmentation / depth at nested data fractions -> results.json and
the report. Each stage is cached by a content hash of its config section and of the stages it reads: re-running
after a change redoes only what the change reaches; a killed stage resumes (its own checkpoints / finished
shards); `--fresh` ignores the cache. With `study.seeds > 1`, pretraining and transfer run once per seed and
the report shows mean +- std.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .atomic import atomic_write_json, remove_tree
from .config import Config, encoder_train, to_dict

CAPTIONER_ID = "tiny"


class StageCache:
    """OUT/stages/NAME.json = {"key", "result"}; a matching key means the stage's output is current."""

    def __init__(self, out: Path, fresh: bool) -> None:
        self.dir, self.fresh, self.ran, self.reused = out / "stages", fresh, [], []
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run(self, name: str, key: str, out_dir: Path | None, fn: Callable[[], dict]) -> dict:
        rec, started = self.dir / f"{name}.json", self.dir / f"{name}.started"
        if not self.fresh and rec.is_file():
            r = json.loads(rec.read_text())
            if r["key"] == key:
                self.reused.append(name)
                return r["result"]
        # a leftover output from another key (or --fresh) is stale: remove it; same key = a killed run: resume
        same = started.is_file() and started.read_text() == key and not self.fresh
        if out_dir is not None and out_dir.exists() and not same:
            remove_tree(out_dir)
        rec.unlink(missing_ok=True)
        started.write_text(key)
        result = fn()
        atomic_write_json(rec, {"key": key, "result": result})
        started.unlink(missing_ok=True)
        self.ran.append(name)
        return result


def _with(cfg: Config, **train) -> Config:
    c = copy.deepcopy(cfg)
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def run_study(cfg: Config, out: str | Path, fresh: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    from .captions.captioners import Sampling, create_captioner
    from .captions.quality import dataset_quality
    from .captions.recaption import recaption
    from .captions.train import train_captioner
    from .data.world_shards import build_world, summary_line, write_preview
    from .evaluate.retrieval import retrieval_metrics
    from .evaluate.zeroshot import zero_shot_classification
    from .models import create_clip
    from .provenance import git_commit, write_run_info
    from .train.baselines import train_baseline
    from .train.pretrain import pretrain
    from .transfer.run import FeatureMemo, run_transfer

    t0, out = time.time(), Path(out)
    git_commit()  # read now: results.json records the tree this run's code came from
    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out, fresh)
    st, wall = cfg.study, {}

    def timed(name: str, fn: Callable[[], dict]) -> Callable[[], dict]:
        def run() -> dict:
            t = time.time()
            r = fn()
            wall[name] = round(time.time() - t, 2)
            return r
        return run

    # 1. world
    world_dir = out / "world"
    k_world = cache.key("world", asdict(cfg.world), cfg.seed)
    log("[1/5] world")
    info = cache.run("world", k_world, None, timed("world", lambda: build_world(cfg, world_dir, progress=progress)))
    log("      " + summary_line(info))
    if not (out / "world_preview.png").is_file():
        write_preview(world_dir, out / "world_preview.png")

    # 2. captions: train the captioner on the curated split, recaption the pool, measure quality
    log("[2/5] captions: train the captioner on the curated split, recaption the pool")
    k_cap = cache.key("captioner", k_world, asdict(cfg.captioner), cfg.seed)
    cap = cache.run("captioner", k_cap, out / "captioner",
                    timed("captioner", lambda: train_captioner(cfg, world_dir / "curated", out / "captioner", progress)))
    log(f"      captioner: {cap['steps']} steps, caption loss {cap['caption_loss']:.3f}")
    k_rec = cache.key("recaption", k_cap, st.captions_per_image, st.caption_sampling, st.caption_beams)

    def do_recaption() -> dict:
        c = create_captioner(f"local-dir:{out / 'captioner' / 'model'}", captioner_id=CAPTIONER_ID)
        s = recaption(world_dir / "pool", out / "pool_captioned", c, st.captions_per_image,
                      Sampling(method=st.caption_sampling, num_beams=st.caption_beams), st.caption_batch_size,
                      progress, cfg.seed)
        s["quality"] = dataset_quality(out / "pool_captioned", max_samples=2000)
        return {k: v for k, v in s.items() if k != "skips"}

    rec = cache.run("recaption", k_rec, out / "pool_captioned", timed("recaption", do_recaption))
    for kind, q in rec["quality"].items():
        log(f"      {kind:<16} objects named correctly {q['objects_named_correctly']:.1%}, "
            f"named objects wrong {q['named_objects_wrong']:.1%}")

    # 3-4. per seed: pretrain every (encoder, method), then transfer
    rows, pretrain_dirs = [], {}
    policies = {"clip-raw": "raw", "clip-synthetic": f"synthetic:{CAPTIONER_ID}",
                "clip-mix": f"mix:{st.mix_p}:{CAPTIONER_ID}", "clip-reference": "reference"}
    for s in range(st.seeds):
        seed = cfg.seed + s
        scfg = copy.deepcopy(cfg)
        scfg.seed = seed
        for enc in st.encoders:
            ecfg = encoder_train(scfg, enc)
            for method in st.methods:
                tag = f"seed{seed}/{enc}-{method}"
                run_dir = out / "pretrain" / tag
                log(f"[3/5] pretrain {tag}")
                if method == "random":
                    spec, k_pre = f"random:{enc}", cache.key("random", enc)
                elif method in policies:
                    data = out / "pool_captioned" if method in ("clip-synthetic", "clip-mix") else world_dir / "pool"
                    c2 = _with(ecfg, model=enc, caption_policy=policies[method])
                    k_pre = cache.key("pretrain", method, k_rec if "pool_captioned" in str(data) else k_world,
                                      asdict(c2.train), seed)

                    def do_pretrain(c2=c2, data=data, run_dir=run_dir) -> dict:
                        r = pretrain(c2, data, run_dir, progress=progress)
                        b = create_clip(f"local-dir:{run_dir / 'model'}")
                        r["retrieval"] = retrieval_metrics(b, world_dir / "val", "reference")
                        r["zeroshot"] = zero_shot_classification(b, world_dir / "val")
                        return r

                    r = cache.run(f"pretrain-{tag.replace('/', '-')}", k_pre, run_dir, timed(f"pretrain {tag}", do_pretrain))
                    rows.append({"method": method, "encoder": enc, "task": "retrieval", "data_fraction": 1.0,
                                 "seed": seed, "metrics": r["retrieval"]})
                    rows.append({"method": method, "encoder": enc, "task": "zeroshot", "data_fraction": 1.0,
                                 "seed": seed, "metrics": r["zeroshot"]})
                    spec = str(run_dir)
                    pretrain_dirs[f"{enc} {method}"] = run_dir
                else:
                    c2 = _with(ecfg, model=enc)
                    k_pre = cache.key("baseline", method, k_world, asdict(c2.train), seed)
                    cache.run(f"pretrain-{tag.replace('/', '-')}", k_pre, run_dir,
                              timed(f"pretrain {tag}", lambda c2=c2, m=method, d=run_dir: train_baseline(
                                  c2, m, world_dir / "pool", d, progress)))
                    spec = str(run_dir)
                    pretrain_dirs[f"{enc} {method}"] = run_dir
                memo = FeatureMemo()  # this encoder's frozen features, shared by its tasks
                for task in st.tasks:
                    c3 = copy.deepcopy(scfg)
                    c3.transfer.task = task
                    t_dir = out / "transfer" / f"{tag}-{task}"
                    k_tr = cache.key("transfer", k_pre, asdict(c3.transfer), seed)
                    r = cache.run(f"transfer-{tag.replace('/', '-')}-{task}", k_tr, t_dir,
                                  timed(f"transfer {tag} {task}",
                                        lambda c3=c3, spec=spec, t_dir=t_dir, memo=memo: run_transfer(
                                            c3, spec, world_dir, t_dir, progress, memo)))
                    for x in r["results"]:
                        rows.append({"method": method, "encoder": enc, "task": task,
                                     "data_fraction": x["data_fraction"], "seed": seed,
                                     "metrics": {k: v for k, v in x["metrics"].items() if k != "IoU_per_class"}})
                    log(f"[4/5] transfer {tag} {task}: " + ", ".join(
                        f"{x['data_fraction']:g}: {next(iter(x['metrics'].items()))[0]} "
                        f"{next(iter(x['metrics'].values())):.4f}" for x in r["results"]))

    # 5. results + report
    log("[5/5] report")
    record = write_run_info(out, cfg, "run", {"stages_run": cache.ran, "stages_reused": cache.reused,
                                              "stage_seconds": wall})
    results = {"rows": rows, "config": to_dict(cfg), "versions": record["versions"],
               "git_commit": record["git_commit"], "seeds": st.seeds, "stage_seconds": wall,
               "caption_quality": rec["quality"], "wall_seconds": round(time.time() - t0, 2)}
    atomic_write_json(out / "results.json", results)
    from .report.build import build_report

    build_report(out, results, pretrain_dirs)
    return results
