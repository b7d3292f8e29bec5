"""`qclip run`: the quality-captions study end to end, from one config.

world -> captioner (curated split) -> recaption the pool -> pretrain every (encoder, method) on the pool with
the same budget (per encoder: `study.encoder_train`) -> transfer each encoder to segmentation / depth at nested data fractions -> results.json and
the report. Each stage is cached by a content hash of its config section and of the stages it reads: re-running
after a change redoes only what the change reaches; a killed stage resumes (its own checkpoints / finished
shards); `--fresh` ignores the cache. With `study.seeds > 1`, pretraining and transfer run once per seed and
the report shows mean +- std.

On your own data (`study.pool`, `study.dense`) the world is not generated: the pool is a qclip dataset, the
captioner is given or trained on `study.curated`, and every encoder transfers to each `study.dense` dataset with
that dataset's recipe. Baselines given as encoders (`study.given`) are transferred beside the methods trained here.
Every input is opened and checked before the first stage trains (`preflight`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .atomic import atomic_write_json, remove_tree
from .config import (
    STUDY_CAPTIONERS,
    STUDY_METHODS,
    Config,
    ConfigError,
    DenseDataConfig,
    StudyMethod,
    dense_transfer,
    encoder_train,
    result_keys,
    to_dict,
    transfer_result_keys,
    uses_own_data,
    world_result_keys,
)
from .distributed import barrier, init_distributed, rank, world_size
from .provenance import QCLIP_FILES
from .report.build import study_run_dir

CAPTIONER_ID = "tiny"


def read_record(path: Path) -> dict | None:
    """A stage record, or None where there is none to trust: missing, empty or cut short (a crash mid-write of
    a record from before records were written atomically; a disk that filled up)."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return r if isinstance(r, dict) and "key" in r and "result" in r else None


def output_files(out_dir: Path | None, root: Path) -> dict[str, int] | None:
    """Every file a stage left in its folder (path relative to the study folder -> size), checkpoints and qclip's
    marker and lock aside (the lock file goes at the writer's exit): what a reuse of the stage checks is there."""
    if out_dir is None or not Path(out_dir).is_dir():
        return None
    root = root.resolve()
    out = {}
    for f in sorted(Path(out_dir).rglob("*")):
        if f.is_file() and "checkpoints" not in f.relative_to(out_dir).parts and f.name not in QCLIP_FILES:
            try:
                out[f.resolve().relative_to(root).as_posix()] = f.stat().st_size
            except ValueError:  # a folder outside the study (a given dataset): not the stage's to check
                return None
    return out


def changed_outputs(record: dict, root: Path) -> list[str]:
    """The recorded outputs that are gone or have another size now (records from before outputs were
    recorded: none to check)."""
    out = []
    for rel, size in (record.get("outputs") or {}).items():
        f = root / rel
        if not f.is_file() or f.stat().st_size != size:
            out.append(rel)
    return out


class StageCache:
    """OUT/stages/NAME.json = {"key", "result", "seconds", "dir"}; a matching key means the stage's output is
    current. `dir` is the stage's output folder relative to OUT (null for none), so tools that move a run's stages
    (benchmarks/study_carry.py) read the layout instead of re-deriving it.

    `seconds` maps each stage this run computed to its wall time; `cached_seconds` each stage it took from the
    cache to the time that stage took when it ran (records written before qclip stored it have none), so a
    re-run that reuses every stage still reports what the stages cost."""

    def __init__(self, out: Path, fresh: bool) -> None:
        self.dir, self.fresh, self.ran, self.reused = out / "stages", fresh, [], []
        self.seconds: dict[str, float] = {}
        self.cached_seconds: dict[str, float] = {}
        self.main = rank() == 0
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def relative(self, out_dir: Path | None) -> str | None:
        """`out_dir` relative to OUT, or None where the stage writes no folder of its own under OUT."""
        try:
            return out_dir.resolve().relative_to(self.dir.parent.resolve()).as_posix() if out_dir else None
        except ValueError:
            return None

    def run(self, name: str, key: str, out_dir: Path | None, fn: Callable[[], dict], label: str = "",
            every_rank: bool = False) -> dict:
        """The stage's result: from OUT/stages/NAME.json when its key matches, else `fn()` (timed under `label`,
        default NAME, in `seconds`) and recorded.

        Under torchrun every rank calls this for every stage, in order: rank 0 decides, cleans and records; `fn`
        runs on every rank where `every_rank` (a distributed stage: recaptioning, pretraining, fine-tuning), else on
        rank 0 alone while the others wait; every rank returns the result rank 0 recorded."""
        rec, started, label = self.dir / f"{name}.json", self.dir / f"{name}.started", label or name
        barrier()  # every rank reads the records as rank 0 left them after the previous stage
        r = None if self.fresh else read_record(rec)
        if r is not None and r.get("key") == key:
            missing = changed_outputs(r, self.dir.parent)
            if missing:  # deleted or replaced since it was recorded (a clean-up): never reuse a result without them
                if self.main:
                    print(f"stage {name}: {len(missing)} of its outputs changed since it ran (e.g. {missing[0]}); "
                          f"running it again", flush=True)
            else:
                self.reused.append(name)
                if "dir" not in r and self.main:  # written before `dir` existed: add it, key and result kept
                    atomic_write_json(rec, {**r, "dir": self.relative(out_dir)})
                if r.get("seconds") is not None:
                    self.cached_seconds[label] = r["seconds"]
                return r["result"]
        if self.main:
            # a leftover output from another key (or --fresh) is stale: remove it; same key = a killed run: resume
            same = started.is_file() and started.read_text() == key and not self.fresh
            if out_dir is not None and out_dir.exists() and not same:
                remove_tree(out_dir)
            rec.unlink(missing_ok=True)
            started.write_text(key)
        barrier()
        t = time.time()
        result = fn() if (every_rank or self.main) else None
        self.seconds[label] = round(time.time() - t, 2)
        barrier()
        if self.main:
            atomic_write_json(rec, {"key": key, "result": result, "seconds": self.seconds[label],
                                    "dir": self.relative(out_dir), "outputs": output_files(out_dir, self.dir.parent)})
            started.unlink(missing_ok=True)
        barrier()
        if not self.main:
            result = json.loads(rec.read_text())["result"]
        self.ran.append(name)
        return result


def study_captioner_id(captioner: str) -> str:
    """The id the study's captioner's captions are stored under in the recaptioned pool (`synthetic:ID`):
    `tiny` for the captioner the study trains, else the last part of `study.captioner`'s name or folder."""
    from .models.factory import parse_spec

    if not captioner:
        return CAPTIONER_ID
    return parse_spec(captioner)[1].rstrip("/").split("/")[-1].replace(":", "_")


def study_method(name: str, mix_p: float, captioner_id: str = CAPTIONER_ID) -> StudyMethod:
    """The method's row of `STUDY_METHODS`, its caption policy filled in for this study."""
    m = STUDY_METHODS[name]
    return dataclasses.replace(m, policy=m.policy.format(captioner=captioner_id, mix_p=mix_p))


def folder_fingerprint(path: Path) -> str:
    """sha256 over a folder's file names and bytes: a given captioner folder's stage key changes with its weights."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def method_config(cfg: Config, encoder: str, method: StudyMethod, seed: int) -> Config:
    """The config one (encoder, method, seed) pretrains with: the encoder's budget (`study.encoder_train`),
    the method's caption policy, and the same images for every method (`pretrain.require_raw_caption`)."""
    c = encoder_train(cfg, encoder)
    c.seed = seed
    c.pretrain = dataclasses.replace(c.pretrain, model=encoder, require_raw_caption=True,
                                  caption_policy=method.policy or c.pretrain.caption_policy)
    return c


def check_image_sizes(cfg: Config) -> None:
    """The study renders, captions, pretrains on and probes the same images: one size for all of them.
    (Stand-alone commands may differ, e.g. a 64 px encoder probed on ADE20k at 512.)"""
    from .models.factory import resolve_model_cfg

    def side(v: int | list[int]) -> int:  # an image size given as one side or (height, width)
        return v if isinstance(v, int) else max(v)

    size, own = cfg.world.image_size, uses_own_data(cfg)
    # on your own data nothing is tied to the world's size: each dense dataset has its recipe's image size
    sizes = {} if own else {"captioner.image_size": cfg.captioner.image_size}
    if not cfg.study.dense and not own:
        sizes["transfer.image_size"] = cfg.transfer.image_size
    for enc in cfg.study.encoders:
        t = encoder_train(cfg, enc).pretrain
        vision = resolve_model_cfg(enc, t.text_tower)[1]["vision_cfg"]
        model_size = t.image_size or vision.get("image_size", size)
        if not own:
            sizes[f"the image size of {enc} (pretrain.image_size, else its model config)"] = model_size
        # SimMIM and SparK (mim on a tower without ViT patches) mask squares of pretrain.mim_mask_patch px: fail here,
        # not at its first training step after the world, captions and other runs
        if "mim" in cfg.study.methods and "patch_size" not in vision and side(model_size) % t.mim_mask_patch:
            raise ConfigError(f"pretrain.mim_mask_patch = {t.mim_mask_patch} does not divide {enc}'s image size "
                              f"{side(model_size)}: masked image modeling masks whole squares; pick a divisor of "
                              f"{side(model_size)}")
    wrong = [f"{k} = {v}" for k, v in sizes.items() if side(v) != size]
    if wrong:
        raise ConfigError(f"the study uses world.image_size = {size} throughout, but {'; '.join(wrong)}: set them "
                          f"to {size} (or world.image_size to theirs)")


def given_captioner_folder(captioner: str) -> Path | None:
    """`study.captioner`'s folder when it names one (a plain path or local-dir:PATH), checked before any stage
    runs; None for a hub name."""
    from .models.checkpoint import MODEL_CONFIG
    from .models.factory import model_spec, parse_spec

    source, name = parse_spec(model_spec(captioner))
    looks_local = source == "local-dir" or (not source and Path(captioner).exists())
    if looks_local and not (Path(name) / MODEL_CONFIG).is_file():
        raise ConfigError(f"study.captioner: '{name}' is not a captioner folder (no {MODEL_CONFIG} in it). Paths are "
                          f"relative to the working directory; `qclip caption train` writes a captioner to OUT/model")
    return Path(name) if looks_local else None


def run_study(cfg: Config, out: str | Path, fresh: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """The whole study into `out`; under torchrun every rank calls it (see StageCache.run)."""
    t0, out = time.time(), Path(out)
    main = rank() == 0
    if not main:  # one voice: rank 0 logs and writes the report
        log, progress = (lambda _: None), False
    check_image_sizes(cfg)
    # a given captioner's folder is checked before any stage runs, so a wrong path fails before the world renders
    given_folder = given_captioner_folder(cfg.study.captioner) if cfg.study.captioner else None
    preflight(cfg, log)
    import torch.distributed as dist

    created = world_size() > 1 and not dist.is_initialized()
    init_distributed()  # under torchrun: the one process group every stage shares
    result = _run_study(cfg, out, fresh, progress, log, given_folder, t0)
    # only after a clean finish: a rank that fails keeps its connections until its error is printed, so torchrun
    # names the failing rank's error as the root cause (not the others' "connection closed by peer")
    if created:
        dist.destroy_process_group()
    return result


def _run_study(cfg: Config, out: Path, fresh: bool, progress: bool, log: Callable[[str], None],
               given_folder: Path | None, t0: float) -> dict:
    from .provenance import git_commit, take_output_folder, write_run_info

    main = rank() == 0
    if world_size() > 1:
        log(f"      {world_size()} ranks: recaptioning, pretraining (CLIP and baselines) and fine-tuning on every "
            "rank; the world, captioner training, probes and the report on rank 0")
    git_commit()  # read now: results.json records the tree this run's code came from
    take_output_folder(out, "run")  # rank 0 alone
    # the other ranks create nothing in OUT before rank 0 has claimed it: a `stages` folder made first by rank 1
    # made rank 0 refuse OUT as a folder qclip did not write
    barrier()
    out.mkdir(parents=True, exist_ok=True)  # every rank
    cache = StageCache(out, fresh)
    world_dir = out / "world"
    keys, quality = _data_stages(cfg, out, cache, progress, log, given_folder)
    rows: list[dict] = []
    pretrain_dirs: dict[str, Path] = {}
    for s in range(cfg.study.seeds):
        for enc in cfg.study.encoders:
            for name in cfg.study.methods:
                method = study_method(name, cfg.study.mix_p, study_captioner_id(cfg.study.captioner))
                mcfg = method_config(cfg, enc, method, cfg.seed + s)
                tag = f"seed{mcfg.seed}/{enc}-{name}"
                log(f"[3/5] pretrain {tag}")
                spec, pretrain_key, pre_rows = _pretrain_stage(mcfg, method, enc, tag, out, world_dir, keys, cache,
                                                               progress)
                rows += pre_rows
                if method.kind != "random":  # keyed per seed, as `qclip report` finds them: one curve/row per seed
                    pretrain_dirs[tag] = Path(spec)
                rows += _transfer_stage(mcfg, spec, pretrain_key, enc, name, tag, out, world_dir, cache, progress,
                                        log)
        rows += _given_stage(cfg, cfg.seed + s, out, world_dir, keys, cache, progress, log)

    log("[5/5] report")
    timings = {"stage_seconds": cache.seconds, "stage_seconds_cached": cache.cached_seconds}
    if not main:  # rank 0 writes results.json and the report; the others wait for it and return it
        barrier()
        return json.loads((out / "results.json").read_text())
    record = write_run_info(out, cfg, "run", {"stages_run": cache.ran, "stages_reused": cache.reused,
                                              "world_size": world_size(), **timings})
    results = {"rows": rows, "config": to_dict(cfg), "versions": record["versions"], "hardware": record["hardware"],
               "git_commit": record["git_commit"], "seeds": cfg.study.seeds, **timings,
               "caption_quality": quality, "wall_seconds": round(time.time() - t0, 2)}
    atomic_write_json(out / "results.json", results)
    from .report.build import build_report

    build_report(out, results, pretrain_dirs)
    barrier()
    return results


# samples of a pool or curated set read before training to prove it holds captions (the whole set at real scale
# would take minutes; a pool whose first thousand samples have none is not usable)
PREFLIGHT_SAMPLES = 1000


def preflight(cfg: Config, log: Callable[[str], None] = print) -> None:
    """Open and check every input the study names before any stage trains: the pool and curated datasets (a qclip
    dataset with captions), each dense dataset's splits (layout, sizes, class ids, disjoint splits) and a given
    hub captioner (loadable here). Raises ConfigError naming the input and the fix."""
    from .data.dense import DenseDataError
    from .data.shards import ShardReader, is_dataset
    from .train.shard_dataset import has_raw_caption
    from .transfer.dataset import open_transfer_splits

    st = cfg.study
    if st.reference:  # read now, not after hours of training: the report places this run among its seeds
        from .report.reference import load_reference

        try:
            load_reference(st.reference)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for key, path, kind in (("study.pool", st.pool, "raw"), ("study.curated", st.curated, "reference")):
        if not path:
            continue
        if not is_dataset(path):
            raise ConfigError(f"{key} '{path}' is not a qclip dataset (no manifest.json); `qclip ingest table|coco|"
                              f"img2dataset|hf ... --out DIR` writes one from your images and captions")
        seen = found = 0
        for smp in ShardReader(path):
            seen += 1
            found += bool(has_raw_caption(smp.meta) if kind == "raw" else smp.captions.get("reference"))
            if found or seen >= PREFLIGHT_SAMPLES:
                break
        if not found:
            what = ("raw captions (alt-text): every method trains on the images that have one"
                    if kind == "raw" else "reference captions to train the captioner on")
            raise ConfigError(f"{key} '{path}': none of its first {seen} samples has {what}. Check the caption "
                              f"column given to `qclip ingest table` (--caption-column)" + (
                                  "" if kind == "raw" else ", or give study.captioner instead"))
    for d in st.dense:
        t = dense_transfer(cfg, d)
        try:
            layout, train, val, select = open_transfer_splits(d.path, t)  # as the transfer itself opens them
            sizes = f"train '{train.split}' {len(train)}, val '{val.split}' {len(val)}"
            if select is not None:
                sizes += f", select '{select.split}' {len(select)}"
        except (DenseDataError, ValueError) as e:
            raise ConfigError(f"study.dense '{d.name}' ({d.path}): {e}") from None
        log(f"      dense {d.name}: {t.task}, {layout} layout, {sizes} images; {t.mode} at {t.image_size} px, "
            f"{t.steps} steps")
    if st.captioner and given_captioner_folder(st.captioner) is None and _captioner_stage_needed(cfg):
        _check_captioner_loads(st.captioner, st.captioner_pretrained)


def _captioner_stage_needed(cfg: Config) -> bool:
    return any(STUDY_METHODS[m].captioner == "main" for m in cfg.study.methods)


def _check_captioner_loads(spec: str, pretrained: str) -> None:
    """A hub captioner (hf:NAME, an open_clip CoCa + tag) must load here before the study starts: on an offline
    machine the download fails, and it should fail now, not after the pool is read."""
    from .captions.captioners import create_captioner
    from .models.factory import model_spec

    try:
        create_captioner(model_spec(spec), pretrained=pretrained or None, captioner_id=study_captioner_id(spec))
    except Exception as e:  # any loader's failure: offline, wrong name, missing extra
        msg = " ".join(str(e).split())[:400]
        raise ConfigError(f"study.captioner '{spec}'" + (f" ({pretrained})" if pretrained else "") + " cannot be "
                          f"loaded here: {type(e).__name__}: {msg}. On a machine without the hub, download it "
                          "where there is one (huggingface-cli download NAME, or open_clip's pretrained file) and "
                          "give its local folder (hf:/path/to/model, local-dir:PATH), or set HF_HOME to a "
                          "cache that holds it") from None


def dataset_fingerprint(path: Path) -> str:
    """A qclip dataset's identity: its manifest (per-shard sample counts and sha256), read in a millisecond."""
    return hashlib.sha256((Path(path) / "manifest.json").read_bytes()).hexdigest()


def dense_fingerprint(d: DenseDataConfig) -> dict:
    """A dense dataset's identity for the transfer stage's key: its folder and what lies in it (names, sizes and
    mtimes, or a qclip manifest), so a dataset replaced at the same path is not mistaken for the old one."""
    import os

    root = Path(d.path).resolve()
    if (root / "manifest.json").is_file():
        return {"path": str(root), "manifest": dataset_fingerprint(root)}
    h = hashlib.sha256()
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(base, f))
            h.update(f"{os.path.relpath(os.path.join(base, f), root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return {"path": str(root), "files": h.hexdigest()}


def _data_stages(cfg: Config, out: Path, cache: StageCache, progress: bool, log,
                 given_folder: Path | None = None) -> tuple[dict, dict]:
    """1. the world; 2. the captioner on the curated split, the recaptioned pool and its caption quality.
    With a method that reads another captioner's captions (STUDY_CAPTIONERS, e.g. captions-only), that captioner
    is trained and recaptions the pool too. Returns the cache keys later stages depend on ({"world", "recaption":
    {captioner: key}}) and the caption quality of every caption kind. `given_folder`: study.captioner's folder
    (given_captioner_folder), None for a hub captioner or none."""
    from .captions.captioners import Sampling, create_captioner
    from .captions.quality import dataset_quality
    from .captions.recaption import recaption
    from .captions.train import train_captioner
    from .data.world_shards import SPLITS, build_world, summary_line, write_preview
    from .models.factory import model_spec

    study, world_dir = cfg.study, out / "world"
    own = uses_own_data(cfg)
    if own:  # your pool: no world; every later key builds on the pool's identity instead of the world's
        pool_dir = Path(study.pool)
        world_key = cache.key("pool", dataset_fingerprint(pool_dir))
        n = json.loads((pool_dir / "manifest.json").read_text()).get("num_samples", "?")
        log(f"[1/5] pool: {pool_dir} ({n} samples; the world is not generated)")
        curated_dir = Path(study.curated) if study.curated else None
    else:
        world_key = cache.key("world", world_result_keys(cfg.world), cfg.seed)  # what later stages' keys build on
        splits = world_splits(cfg)
        # the stage's own key names the splits when some are left out (a split's samples do not depend on which
        # others exist, so later keys do not): a study that needs the curated split later generates only that one
        stage_key = world_key if splits == SPLITS else cache.key(world_key, list(splits))
        log("[1/5] world")
        info = cache.run("world", stage_key, None,
                         lambda: build_world(cfg, world_dir, progress=progress, splits=splits))
        log("      " + summary_line(info, None if "world" in cache.ran else world_dir))
        if not (out / "world_preview.png").is_file() and rank() == 0:
            write_preview(world_dir, out / "world_preview.png")
        pool_dir, curated_dir = world_dir / "pool", world_dir / "curated"

    given = study.captioner  # a captioner to use as it is (a pretrained one), instead of training the in-repo one
    if own and not any(STUDY_METHODS[m].captioner for m in study.methods):
        log("[2/5] captions: no method reads synthetic captions; the pool is not recaptioned")
        return {"world": world_key, "recaption": {}, "pool": pool_dir}, {}
    log("[2/5] captions: " + (f"recaption the pool with {given}" if given else
                              "train the captioner on the curated split, recaption the pool"))
    variants = captioner_variants(cfg)
    recaption_keys, quality = {}, {}
    for variant in variants:
        ccfg = dataclasses.replace(cfg, captioner=dataclasses.replace(cfg.captioner, **STUDY_CAPTIONERS[variant]))
        suffix = "" if variant == "main" else f"-{variant}"
        cap_dir, captioned_dir = out / f"captioner{suffix}", out / captioned_pool(variant)
        if variant == "main" and given:
            spec, pretrained, cid = model_spec(given), study.captioner_pretrained or None, study_captioner_id(given)
            # the pool it recaptions, and the captioner by content (a folder) or by name (a hub model)
            captioner_key = cache.key("captioner", world_key, cid,
                                      folder_fingerprint(given_folder) if given_folder else spec,
                                      pretrained)
            log(f"      captioner: {spec} as given (not trained here), captions stored as synthetic:{cid}")
        else:
            spec, pretrained, cid = f"local-dir:{cap_dir / 'model'}", None, CAPTIONER_ID
            captioner_key = cache.key("captioner", world_key, asdict(ccfg.captioner), cfg.seed,
                                      *([dataset_fingerprint(curated_dir)] if own else []))
            cap = cache.run(f"captioner{suffix}", captioner_key, cap_dir,
                            lambda: train_captioner(ccfg, curated_dir, cap_dir, progress))
            log(f"      captioner{suffix}: {cap['steps']} steps, caption loss {cap['caption_loss']:.3f}")
        recaption_keys[variant] = cache.key("recaption", captioner_key, study.captions_per_image,
                                            study.caption_sampling, study.caption_beams)

        def do_recaption() -> dict:
            c = create_captioner(spec, pretrained=pretrained, captioner_id=cid)
            s = recaption(pool_dir, captioned_dir, c, study.captions_per_image,
                          Sampling(method=study.caption_sampling, num_beams=study.caption_beams),
                          study.caption_batch_size, progress, cfg.seed)
            # the world's measure reads scene graphs; a user's pool has none. Rank 0 records it (and the counts)
            s["quality"] = {} if own or rank() else dataset_quality(captioned_dir, max_samples=2000)
            return {k: v for k, v in s.items() if k != "skips"}

        # every rank: under torchrun the ranks split the shards (data.shard_job.map_shards)
        rec = cache.run(f"recaption{suffix}", recaption_keys[variant], captioned_dir, do_recaption, every_rank=True)
        for kind, q in rec["quality"].items():
            if variant != "main" and not kind.startswith("synthetic"):
                continue  # raw and reference are the same pool's
            quality[kind + suffix] = q
    for kind, q in quality.items():
        log(f"      {kind:<16} objects named correctly {q['objects_named_correctly']:.1%}, "
            f"named objects wrong {q['named_objects_wrong']:.1%}")
    # "world": the key later stages build on (the world's, or your pool's); "pool": the pool CLIP and MIM read
    return {"world": world_key, "recaption": recaption_keys, "pool": pool_dir}, quality


def world_splits(cfg: Config) -> tuple[str, ...]:
    """The world splits the study reads: all but the curated split when nothing trains on it (the captioner is
    given, and no method is a baseline on it or needs a captioner of its own): half the demo's images."""
    from .data.world_shards import SPLITS

    methods = [STUDY_METHODS[m] for m in cfg.study.methods]
    needs_curated = (not cfg.study.captioner or captioner_variants(cfg) != ["main"]
                     or any(m.kind == "baseline" and m.split == "curated" for m in methods))
    return SPLITS if needs_curated else tuple(s for s in SPLITS if s != "curated")


def captioner_variants(cfg: Config) -> list[str]:
    """The STUDY_CAPTIONERS whose captions the study's methods read: "main" (which study.captioner may give),
    then every other one, which the study trains on the curated split."""
    return ["main"] + sorted({STUDY_METHODS[m].captioner for m in cfg.study.methods} - {"main", ""})


def captioned_pool(variant: str) -> str:
    """The folder (under the study's output) of the pool recaptioned by captioner `variant`."""
    return "pool_captioned" if variant == "main" else f"pool_captioned_{variant.replace('-', '_')}"


def _pretrain_stage(mcfg: Config, method: StudyMethod, enc: str, tag: str, out: Path, world_dir: Path,
                    keys: dict, cache: StageCache, progress: bool) -> tuple[str, str, list[dict]]:
    """3. pretrain one (encoder, method, seed): returns the encoder spec for transfer, the stage's cache key
    (transfer depends on it) and the CLIP run's retrieval / zero-shot rows."""
    from .evaluate.retrieval import retrieval_metrics
    from .evaluate.zeroshot import zero_shot_classification
    from .models import create_clip
    from .models.factory import resolve_model_cfg
    from .train.baselines import train_baseline
    from .train.pretrain import pretrain

    # the model by content, not by name: a preset edited in place (e.g. its text tower) must not reuse old stages
    model_cfg = resolve_model_cfg(mcfg.pretrain.model, mcfg.pretrain.text_tower, mcfg.pretrain.image_size)[1]
    if method.kind == "random":
        # the untrained tower is the same in every world, but the key also keys its transfers, which read the
        # world's labelled splits: without the world, a study re-run in another world reused the old world's rows
        return f"random:{enc}", cache.key("random", enc, model_cfg["vision_cfg"], keys["world"]), []
    run_dir, seed = study_run_dir(out, "pretrain", mcfg.seed, enc, method.name), mcfg.seed
    pool_dir = Path(keys.get("pool") or world_dir / "pool")
    own = uses_own_data(mcfg)
    stage = f"pretrain-{tag.replace('/', '-')}"
    if method.kind == "baseline":
        # a supervised run ignores the masked-modeling keys: changing them re-runs only masked image modeling
        pretrain_key = cache.key("baseline", method.name, keys["world"],
                                 result_keys(mcfg.pretrain, text_tower=False, masked=method.name == "mim"),
                                 model_cfg, seed)
        split_dir = pool_dir if method.split == "pool" else world_dir / method.split
        cache.run(stage, pretrain_key, run_dir, lambda: train_baseline(  # data-parallel over every rank
            mcfg, method.name, split_dir, run_dir, progress), label=f"pretrain {tag}", every_rank=True)
        return str(run_dir), pretrain_key, []
    data = out / captioned_pool(method.captioner) if method.captioner else pool_dir
    pretrain_key = cache.key("pretrain", method.name,
                             keys["recaption"][method.captioner] if method.captioner else keys["world"],
                             result_keys(mcfg.pretrain), model_cfg, seed)

    def do_pretrain() -> dict:
        r = pretrain(mcfg, data, run_dir, progress=progress)  # DDP over every rank under torchrun
        if not own and rank() == 0:  # retrieval and zero-shot read the world's val split: reference captions, labels
            b = create_clip(f"local-dir:{run_dir / 'model'}")
            r["retrieval"] = retrieval_metrics(b, world_dir / "val", "reference")
            r["zeroshot"] = zero_shot_classification(b, world_dir / "val")
        return r

    r = cache.run(stage, pretrain_key, run_dir, do_pretrain, label=f"pretrain {tag}", every_rank=True)
    rows = [{"method": method.name, "encoder": enc, "task": task, "data_fraction": 1.0, "seed": seed,
             "metrics": r[task]} for task in ("retrieval", "zeroshot") if task in r]
    return str(run_dir), pretrain_key, rows


def _transfer_stage(mcfg: Config, spec: str, pretrain_key: str, enc: str, method: str, tag: str, out: Path,
                    world_dir: Path, cache: StageCache, progress: bool, log) -> list[dict]:
    """4. transfer one encoder to every task at every labelled fraction; the tasks share its frozen features.
    On your own dense datasets (study.dense): to each one, with its own recipe, keyed by its identity too."""
    from .transfer.run import FeatureMemo, run_transfer

    memo, rows = FeatureMemo(), []
    targets = ([(d.task, dense_transfer(mcfg, d), Path(d.path), d) for d in mcfg.study.dense] if mcfg.study.dense
               else [(task, dataclasses.replace(mcfg.transfer, task=task), world_dir, None)
                     for task in mcfg.study.tasks])
    for task, transfer, data, dense in targets:
        tcfg = dataclasses.replace(mcfg, transfer=transfer)
        t_dir = study_run_dir(out, "transfer", mcfg.seed, enc, method, task)
        transfer_key = cache.key("transfer", pretrain_key, transfer_result_keys(tcfg.transfer), mcfg.seed,
                                 *([dense.name, dense_fingerprint(dense)] if dense else []))
        r = cache.run(f"transfer-{tag.replace('/', '-')}-{task}", transfer_key, t_dir,
                      lambda: run_transfer(tcfg, spec, data, t_dir, progress, memo),
                      label=f"transfer {tag} {task}", every_rank=transfer.mode == "finetune")  # DDP fine-tuning
        for x in r["results"]:
            rows.append({"method": method, "encoder": enc, "task": task, "data_fraction": x["data_fraction"],
                         "seed": mcfg.seed, "metrics": x["metrics"],
                         **({"dataset": dense.name} if dense else {}),
                         "probe": {**{k: x.get(k) for k in ("final_train_loss", "loss_drop_last_fifth_pct",
                                                            "converged")},
                                   **({"selection": x["probe_selection"]} if "probe_selection" in x else {})}})
        log(f"[4/5] transfer {tag} {task}" + (f" ({dense.name})" if dense else "") + ": " + ", ".join(
            f"{x['data_fraction']:g}: {next(iter(x['metrics'].items()))[0]} "
            f"{next(iter(x['metrics'].values())):.4f}" for x in r["results"]))
    return rows


def given_encoder_key(spec: str) -> str:
    """A given encoder by content where it is a folder (its weights may be replaced there), else by its name."""
    from .models.factory import parse_spec

    name = parse_spec(spec)[1]
    folder = next((p for p in map(Path, (spec, name, name.split("local-dir:", 1)[-1])) if p.is_dir()), None)
    return folder_fingerprint(folder) if folder is not None else spec


def _given_stage(cfg: Config, seed: int, out: Path, world_dir: Path, keys: dict, cache: StageCache,
                 progress: bool, log) -> list[dict]:
    """4'. the baselines given as encoders (study.given): transferred once per seed like the methods trained here
    (same recipe, labelled subsets and head initialisation), not pretrained; their rows are listed under every
    study encoder, so each comparison sees them, and carry `given` (the spec) so the report says so."""
    rows: list[dict] = []
    for name, spec in cfg.study.given.items():
        c = copy.deepcopy(cfg)
        c.seed = seed
        tag = f"seed{seed}/given-{name}"
        log(f"[3/5] given {tag}: {spec} (not trained here)")
        key = cache.key("given", given_encoder_key(spec), keys["world"])
        got = _transfer_stage(c, spec, key, "given", name, tag, out, world_dir, cache, progress, log)
        rows += [{**r, "encoder": enc, "given": spec} for enc in cfg.study.encoders for r in got]
    return rows
