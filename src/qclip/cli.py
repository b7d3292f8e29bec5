"""`qclip {run,world,ingest,caption,pretrain,teacher,export,push,transfer,eval,report}`: one subcommand per stage.

Every subcommand takes `--config FILE` and dotted overrides (`pretrain.batch_size=64`), and writes the resolved
config, package versions and git commit next to its outputs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import Config, ConfigError, load_config


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default only where there is one to show (not None, '', False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, "", False, []) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


# the config sections each command reads: `qclip SUB --help` lists their keys with defaults
CONFIG_SECTIONS = {
    "run": ("world", "captioner", "pretrain", "transfer", "study"), "world": ("world",), "ingest": ("ingest",),
    "pretrain": ("pretrain",), "caption": ("captioner",), "transfer": ("transfer",),
}


# an override each section's commands would take, for their --help
OVERRIDE_EXAMPLES = {"world": "world.n_pool=2000", "ingest": "ingest.max_bad_fraction=0.1",
                     "captioner": "captioner.steps=500", "pretrain": "pretrain.batch_size=64",
                     "transfer": "transfer.steps=1000", "study": "study.seeds=3"}


def _add_config_args(p: argparse.ArgumentParser, sections: Sequence[str] = ()) -> None:
    from .config import config_keys_help

    p.add_argument("--config", default=None, help="YAML config file (see configs/); without it, the built-in "
                   "defaults listed below (configs/demo.yaml sets the demo's own)" if sections else
                   "YAML config file (see configs/); built-in defaults if omitted")
    example = " ".join(OVERRIDE_EXAMPLES[s] for s in sections[:2]) if sections else "pretrain.batch_size=64"
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help=f"dotted config overrides, e.g. {example}")
    if sections:
        keys = "config keys (KEY=VALUE or in --config; built-in defaults):\n" + config_keys_help(sections)
        p.epilog = f"{p.epilog}\n\n{keys}" if p.epilog else keys


def model_spec(arg: str) -> str:
    from .models.factory import model_spec as spec  # lazy: `qclip --help` does not import torch

    return spec(arg)


def model_id(arg: str, pretrained: str = "") -> str:
    """A short id for a model argument: the folder name for a path, `name_tag` for an open_clip name."""
    name = arg.rstrip("/").split("/")[-1] if "/" in arg else arg
    if name == "model" and "/" in arg.rstrip("/"):  # RUN/model -> RUN
        name = arg.rstrip("/").split("/")[-2]
    return "_".join(x for x in (name.replace(":", "_"), pretrained) if x)


def _load(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    return load_config(args.config, [*args.overrides, *extra])


# ---------------------------------------------------------------------------------------------------
# world


def cmd_world(args: argparse.Namespace) -> int:
    extra = []
    if args.n is not None:
        extra.append(f"world.n_pool={args.n}")
    if args.seed is not None:
        extra.append(f"seed={args.seed}")
    if args.workers is not None:
        extra.append(f"world.workers={args.workers}")
    cfg = _load(args, extra)  # before the heavy imports: a config error answers at once
    from .data.world_shards import build_world, summary_line, write_preview
    from .provenance import write_run_info

    info = build_world(cfg, args.out, progress=not args.quiet)
    write_run_info(args.out, cfg, "world", {"summary": info})
    print(summary_line(info))
    if args.preview:
        path = write_preview(args.out, Path(args.out) / "preview.png")
        print(f"world: preview written to {path}")
    return 0


# ---------------------------------------------------------------------------------------------------
# ingest


def cmd_ingest(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from .data import importers as im
    from .provenance import write_run_info

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise im.IngestError(f"output '{out}' exists; pass --overwrite to replace it (atomically, when done)")
    side: list = []
    if args.source == "table":
        cands, total = im.table_candidates(args.images, args.table, args.path_column, args.caption_column)
        source = f"table:{Path(args.table).name}"
    elif args.source == "coco":
        cands, total = im.coco_candidates(args.images, args.annotations)
        source = f"coco:{Path(args.annotations).name}"
    elif args.source == "hf":
        cands, total = im.hf_candidates(args.dataset, args.split, args.image_column, args.caption_column,
                                        args.subset or None, args.revision or None)
        source = f"hf:{args.dataset}[{args.split}]"
    else:
        cands, total = im.img2dataset_candidates(im.expand_shards(args.shards), side), None
        source = "img2dataset"
    summary = im.ingest(cands, out, cfg.ingest, source, total=total, progress=not args.quiet, side_skips=side)
    write_run_info(out, cfg, "ingest", {"summary": summary})
    print(summary["line"])
    return 0


# ---------------------------------------------------------------------------------------------------
# run (the main job)


def cmd_run(args: argparse.Namespace) -> int:
    t0 = time.time()
    cfg = _load(args, [f"study.seeds={args.seeds}"] if args.seeds else [])
    from .study import run_study

    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks
    if main:
        print(f"qclip run: study in {args.out} (seed {cfg.seed}, {cfg.study.seeds} seed(s); encoders "
              f"{', '.join(cfg.study.encoders)}; methods {', '.join(cfg.study.methods)})")
    run_study(cfg, args.out, fresh=args.fresh, progress=not args.quiet)
    if main:
        print(f"qclip run: done in {time.time() - t0:.1f}s; results in {args.out}/results.json, report in "
              f"{args.out}/report.html")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import build_report

    run_dir = args.run_dir or args.out
    if not run_dir:
        raise ConfigError("qclip report needs the study's folder: qclip report RUN (RUN = qclip run --out)")
    build_report(run_dir, reference=args.reference)
    return 0


# ---------------------------------------------------------------------------------------------------
# pretrain, export, eval


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from .train.pretrain import pretrain

    if not Path(args.data).exists():
        raise ConfigError(f"--data '{args.data}' does not exist (a qclip dataset: qclip world / qclip ingest)")
    pretrain(cfg, args.data, args.out, progress=not args.quiet,
             start_mode="fresh" if args.fresh else "resume" if args.resume else "auto")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    if args.action == "quality":
        from .captions.quality import dataset_quality, format_quality

        print(format_quality(dataset_quality(args.data, args.max_samples)))
        return 0
    if args.action == "train":
        cfg = _load(args)
        from .captions.train import train_captioner

        s = train_captioner(cfg, args.data, args.out, progress=not args.quiet)
        regions = (f"region loss {s['region_loss']:.3f} on {s['region_boxes']:,} boxes of {len(s['region_classes'])} "
                   f"classes" if s["region_loss"] is not None else "no region supervision")
        print(f"caption train: {s['steps']} steps, caption loss {s['caption_loss']:.3f} per token, {regions}, "
              f"vocabulary {s['vocab']} words, {s['seconds']:.0f}s; captioner in {s['model_dir']} "
              f"(qclip caption run --captioner {s['model_dir']})")
        return 0
    if args.action == "stats":
        from .captions.stats import caption_stats, format_stats, write_stats

        st = caption_stats(args.data, args.max_samples)
        print(format_stats(st))
        if args.out:
            print(f"caption stats: plots in {write_stats(st, args.out)}")
        return 0
    if args.action == "score":
        cfg = _load(args)
        from .captions.score import score_dataset
        from .models import create_clip
        from .provenance import write_run_info

        bundle = create_clip(model_spec(args.scorer), pretrained=args.pretrained or None, trained=True)
        scorer_id = args.id or model_id(args.scorer, args.pretrained)
        summary = score_dataset(args.data, args.out, bundle, scorer_id, args.batch_size, progress=not args.quiet)
        if "line" in summary:
            write_run_info(args.out, cfg, "caption-score", {"summary": summary})
            print(summary["line"] + f"; scores under scores['{scorer_id}']; {summary['resumed_shards']} shard(s) "
                  f"kept from an earlier run")
        return 0
    cfg = _load(args)
    from .captions.captioners import Sampling, create_captioner
    from .captions.recaption import recaption
    from .provenance import write_run_info

    captioner = create_captioner(model_spec(args.captioner), pretrained=args.pretrained or None, captioner_id=args.id,
                                 trust_remote_code=args.trust_remote_code)
    sampling = Sampling(method=args.sampling, num_beams=args.num_beams, top_p=args.top_p,
                        temperature=args.temperature, max_len=args.max_len)
    summary = recaption(args.data, args.out, captioner, args.n, sampling, args.batch_size, progress=not args.quiet,
                        seed=cfg.seed)
    if "line" in summary:
        write_run_info(args.out, cfg, "caption", {"summary": summary})
        print(summary["line"] + f"; {summary['empty_generations']} empty generations recorded as ''; "
              f"{summary['resumed_shards']} shard(s) kept from an earlier run")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from .models import create_clip
    from .provenance import write_run_info
    from .train.distill import write_teacher_embeddings

    info = write_teacher_embeddings(args.data, args.out, create_clip(model_spec(args.model), pretrained=args.pretrained or None),
                                    progress=not args.quiet)
    write_run_info(args.out, cfg, "teacher", {"summary": info, "teacher": args.model})
    print(f"teacher: embeddings of {info['samples']:,} samples from {args.model} written to {args.out} "
          f"in {info['seconds']:.0f}s; train with pretrain.distill_weight=0.7")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _load(args)  # no config key applies here, but a wrong file or key is an error, as for every command
    from .models.export import export_image_tower

    out = export_image_tower(args.model, args.out)
    print(f"export: image tower of {args.model} written to {out} (timm.create_model('local-dir:{out}'))")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    _load(args)  # no config key applies here, but a wrong file or key is an error, as for every command
    from .models.hub import push_to_hub

    r = push_to_hub(args.model, args.repo, private=args.private, dry_run=args.dry_run)
    if r["uploaded"]:
        print(f"push: {', '.join(r['files'])} -> {r['url']} (open_clip: hf-hub:{args.repo})")
    else:
        print(f"push (dry run): would upload {', '.join(r['files'])} to {args.repo}; staged in {r['staged']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    _load(args)  # no config key applies here, but a wrong file or key is an error, as for every command
    from .evaluate.retrieval import retrieval_metrics
    from .models import create_clip

    bundle = create_clip(model_spec(args.model), pretrained=args.pretrained or None, trained=True)
    result: dict = {"model": args.model, "data": args.data}
    lines = []
    if args.task in ("retrieval", "all"):
        m = result["retrieval"] = retrieval_metrics(bundle, args.data, args.text, args.max_samples)
        lines.append(f"eval: retrieval over {m['n']} images ({args.text} text), image->text R@1 "
                     f"{m['image_to_text_R@1']:.3f}, text->image R@1 {m['text_to_image_R@1']:.3f} "
                     f"(chance {m['chance_R@1']:.4f})")
    if args.task in ("zeroshot", "all"):
        from .evaluate.zeroshot import zero_shot_classification

        z = result["zeroshot"] = zero_shot_classification(bundle, args.classes_data or args.data, args.templates,
                                                          args.max_samples)
        lines.append(f"eval: zero-shot classification of {z['n']} images into {len(z['classes'])} classes, top-1 "
                     f"{z['top1']:.3f} (majority class {z['chance_top1']:.3f})")
    if args.out:
        from .atomic import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k in ("retrieval", "zeroshot")}, indent=1))
    print("\n".join(lines))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from .transfer.fractions import parse_fractions

    extra = [f"transfer.{k}={v}" for k, v in (("task", args.task), ("mode", args.mode)) if v]
    if args.data_fractions:
        try:
            extra.append(f"transfer.data_fractions={parse_fractions(args.data_fractions)}")
        except ValueError as e:
            raise ConfigError(str(e)) from e
    cfg = _load(args, extra)
    from .transfer.run import format_summary, run_transfer

    summary = run_transfer(cfg, model_spec(args.encoder), args.data, args.out, not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun (DDP fine-tuning), rank 0 speaks
        print(format_summary(summary))
    return 0




# ---------------------------------------------------------------------------------------------------


def _number(kind: type, ok, what: str):
    """argparse type: a number of `kind` for which `ok(v)` holds, else an error saying `what` it must be;
    refused while parsing, before any work or output."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{v} must be {what}")
        return v
    parse.__name__ = what
    return parse


def _count(minimum: int):
    return _number(int, lambda v: v >= minimum, f">= {minimum}")


_fraction = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "finite and > 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qclip", formatter_class=_Formatter,
        description="CLIP with quality captions: data -> captions -> CLIP pretraining -> dense transfer -> report.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"qclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the whole study from one config (the main job)", formatter_class=_Formatter)
    p.add_argument("--out", default="runs/demo", help="output directory of the study")
    p.add_argument("--fresh", action="store_true", help="ignore cached stages and redo everything")
    p.add_argument("--seeds", type=_count(0), default=0, help="repeat pretraining + transfer for N seeds (0 = study.seeds)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_args(p, CONFIG_SECTIONS["run"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="re-render tables, plots and report.html from a study's results.json",
                       formatter_class=_Formatter)
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN",
                   help="the study's output directory (qclip run --out; holds results.json)")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)  # the old spelling of RUN, still accepted
    p.add_argument("--reference", default=None, metavar="RESULTS",
                   help="place this run's numbers among another run's seeds: its results.json or study folder "
                        "(default: the run's study.reference)")
    _add_config_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("world", help="generate the embedded procedural world as shards", formatter_class=_Formatter)
    p.add_argument("--out", required=True, help="output directory (one dataset per split inside)")
    d = Config()
    p.add_argument("--n", type=_count(0), default=None,
                   help=f"pool size; None = world.n_pool from the config (built-in {d.world.n_pool})")
    p.add_argument("--seed", type=int, default=None, help=f"None = seed from the config (built-in {d.seed})")
    p.add_argument("--workers", type=int, default=None,
                   help=f"generator processes; None = world.workers from the config (built-in {d.world.workers})")
    p.add_argument("--preview", action="store_true", help="also write OUT/preview.png (images, masks, depth, captions)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, CONFIG_SECTIONS["world"])
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("ingest", help="import image-text pairs into a qclip dataset", formatter_class=_Formatter,
                       epilog="Each SOURCE has its own options: qclip ingest SOURCE --help")
    isub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    q = isub.add_parser("table", help="folder of images + CSV/TSV/JSONL/Parquet table", formatter_class=_Formatter)
    q.add_argument("--images", required=True, help="folder the table's paths are relative to")
    q.add_argument("--table", required=True, help=".csv, .tsv, .jsonl or .parquet")
    q.add_argument("--path-column", default="path", help="column with the image path")
    q.add_argument("--caption-column", default="caption", help="column with the caption (a string or a list)")
    q = isub.add_parser("coco", help="COCO captions JSON (all captions per image kept)", formatter_class=_Formatter)
    q.add_argument("--images", required=True, help="image folder, e.g. coco/train2017")
    q.add_argument("--annotations", required=True, help="e.g. annotations/captions_train2017.json")
    q = isub.add_parser("img2dataset", help="existing img2dataset WebDataset shards", formatter_class=_Formatter)
    q.add_argument("--shards", required=True, help="folder, glob, or brace pattern like 'data/{00000..00009}.tar'")
    q = isub.add_parser("hf", help="a Hugging Face dataset (hub name, or a save_to_disk / data folder)",
                        formatter_class=_Formatter)
    q.add_argument("--dataset", required=True, help="hub name (needs the network), a save_to_disk folder, or a "
                   "folder load_dataset reads (imagefolder with metadata.jsonl, parquet, ...)")
    q.add_argument("--split", default="train", help="split to ingest")
    q.add_argument("--subset", default="", help="the dataset's configuration (load_dataset's name), if it has several")
    q.add_argument("--revision", default="", help="hub revision (branch, tag or commit)")
    q.add_argument("--image-column", default="image", help="column with the image (datasets Image feature or bytes)")
    q.add_argument("--caption-column", default="caption", help="column with the caption (a string or a list)")
    for q in isub.choices.values():
        q.add_argument("--out", required=True, help="output dataset directory")
        q.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        _add_config_args(q, CONFIG_SECTIONS["ingest"])
        q.set_defaults(func=cmd_ingest)

    p = sub.add_parser("pretrain", help="pretrain CLIP on a qclip dataset (torchrun for many processes)",
                       formatter_class=_Formatter,
                       epilog="Training options are config keys under pretrain.*, e.g. pretrain.model=qclip-mci-tiny "
                              "pretrain.caption_policy=mix:0.8 pretrain.batch_size=256 pretrain.steps=2000")
    p.add_argument("--data", required=True, help="qclip dataset directory (manifest.json + shards/)")
    p.add_argument("--out", required=True, help="run directory; re-running the same command resumes it")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="require a checkpoint in --out to resume (default: resume one when its settings match)")
    how.add_argument("--fresh", action="store_true",
                     help="start over: remove the previous run's outputs (checkpoints, model, logs) from --out first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p, CONFIG_SECTIONS["pretrain"])
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("teacher", help="store a teacher CLIP's embeddings in a dataset for distillation",
                       formatter_class=_Formatter)
    p.add_argument("--data", required=True, help="source qclip dataset")
    p.add_argument("--model", required=True, help="teacher: model folder (RUN/model) or open_clip model name")
    p.add_argument("--pretrained", default="", help="open_clip pretrained tag, e.g. datacompdr for MobileCLIP-S2")
    p.add_argument("--out", required=True, help="output dataset (a copy with KEY.teacher.npz members)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("export", help="export a model's image tower as a timm model folder", formatter_class=_Formatter)
    p.add_argument("--model", required=True, help="model folder (RUN/model, with open_clip_config.json)")
    p.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    _add_config_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push", help="upload a trained model folder to the Hugging Face Hub (open_clip hf-hub:)",
                       formatter_class=_Formatter)
    for flag, kw in (("--model", {"required": True, "help": "model folder (RUN/model, with open_clip_config.json)"}),
                     ("--repo", {"required": True, "help": "Hub repo id, OWNER/NAME (created if missing)"}),
                     ("--private", {"action": "store_true", "help": "create the repo as private"}),
                     ("--dry-run", {"action": "store_true", "help": "stage the files and the model card, upload nothing"})):
        p.add_argument(flag, **kw)
    _add_config_args(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("eval", help="zero-shot image-text retrieval R@1/5/10 and zero-shot classification",
                       formatter_class=_Formatter)
    p.add_argument("--task", choices=["retrieval", "zeroshot", "all"], default="all", help="what to measure")
    p.add_argument("--classes-data", default="", help="zeroshot: labelled images if not --data: an ImageFolder "
                   "layout (ROOT/<class>/*.jpg) or a world split (label: the shape with the most pixels)")
    p.add_argument("--templates", choices=["openai", "simple"], default="openai", help="zeroshot prompt templates")
    p.add_argument("--model", required=True, help="model folder (RUN/model) or open_clip model name")
    p.add_argument("--pretrained", default="", help="open_clip pretrained tag or weights file (with a name)")
    p.add_argument("--data", required=True, help="qclip dataset with captions (e.g. the world's val split)")
    p.add_argument("--text", default="reference", help="caption kind to retrieve: raw, reference or a captioner id")
    p.add_argument("--max-samples", type=_count(0), default=0, help="0: all")
    p.add_argument("--out", default="", help="also write the metrics to this JSON file")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("caption", help="train a captioner, recaption a dataset, score and measure captions",
                       formatter_class=_Formatter,
                       description="One action per step of the caption stage; `qclip caption ACTION --help` for each.")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def caption_action(name: str, help: str, out_help: str | None) -> argparse.ArgumentParser:
        q = csub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        q.add_argument("--data", required=True, help="qclip dataset (manifest.json + shards/)")
        if out_help:
            q.add_argument("--out", required=name != "stats", default="", help=out_help)
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        _add_config_args(q, CONFIG_SECTIONS["caption"] if name == "train" else ())
        q.set_defaults(func=cmd_caption)
        return q

    q = caption_action("train", "train the in-repo CoCa captioner on a dataset's reference captions "
                       "(settings: captioner.* keys)", "the captioner's run folder (its model in OUT/model)")
    q = caption_action("run", "add synthetic captions to every image (a copy of the dataset; resumable)",
                       "output dataset: a copy with captions.synthetic[ID] added")
    q.add_argument("--captioner", required=True, help="open_clip CoCa name (coca_ViT-L-14), hf:NAME_OR_DIR "
                   "(BLIP, GIT, ...) or a captioner folder (qclip caption train's OUT/model)")
    q.add_argument("--pretrained", default="", help="open_clip pretrained tag, e.g. mscoco_finetuned_laion2B-s13B-b90k")
    q.add_argument("--trust-remote-code", action="store_true",
                   help="let an hf: model run its own code from the hub (only for models you trust)")
    q.add_argument("--id", default="", help="id under captions.synthetic; empty: from the model's name")
    q.add_argument("--n", type=_count(1), default=1, help="captions per image")
    q.add_argument("--sampling", default="beam", choices=["beam", "nucleus"], help="first caption's decoding; "
                   "further captions (--n > 1) are always sampled")
    q.add_argument("--num-beams", type=_count(1), default=4, help="beams for beam search")
    q.add_argument("--top-p", type=_fraction, default=0.9, help="nucleus sampling: probability mass kept, in (0, 1]")
    q.add_argument("--temperature", type=_positive_float, default=1.0, help="sampling temperature, > 0")
    q.add_argument("--max-len", type=_count(1), default=30, help="maximum caption length in tokens")
    q.add_argument("--batch-size", type=_count(1), default=32, help="images per captioner batch")
    q = caption_action("score", "CLIP score of every caption (raw and synthetic) against its image (resumable)",
                       "output dataset: a copy with scores[ID] added")
    q.add_argument("--scorer", required=True, help="CLIP model: an open_clip name (with --pretrained) or a "
                   "model folder (RUN/model)")
    q.add_argument("--pretrained", default="", help="open_clip pretrained tag of --scorer")
    q.add_argument("--id", default="", help="id under scores; empty: from the scorer's name")
    q.add_argument("--batch-size", type=_count(1), default=32, help="images per scorer batch")
    q = caption_action("stats", "caption length, vocabulary and score histograms per caption kind",
                       "folder for caption_stats.png and caption_stats.json (empty: print only)")
    q.add_argument("--max-samples", type=_count(0), default=0, help="samples read; 0 = all")
    q = caption_action("quality", "the world's caption-quality measure: how much of each scene every caption "
                       "kind names correctly (world datasets only)", None)
    q.add_argument("--max-samples", type=_count(0), default=0, help="samples read; 0 = all")

    p = sub.add_parser("transfer", help="transfer an image encoder to segmentation or depth (probe or fine-tune)",
                       formatter_class=_Formatter,
                       epilog="encoder specs: a qclip model/run folder, MODEL:TAG (open_clip pretrained), "
                              "timm:NAME[.TAG] (e.g. timm:vit_base_patch16_224.mae), timm:local-dir:PATH, "
                              "random:ARCH (e.g. random:qclip-vit-tiny). Other settings: transfer.* overrides, "
                              "e.g. transfer.steps=2000 transfer.image_size=512")
    p.add_argument("--encoder", required=True, help="encoder spec (see below)")
    p.add_argument("--data", required=True, help="dense dataset: a world folder, ADE20k/VOC/NYUv2/folder layout")
    p.add_argument("--task", choices=["segmentation", "depth"], default=None, help="None = transfer.task")
    p.add_argument("--mode", choices=["probe", "finetune"], default=None, help="None = transfer.mode")
    p.add_argument("--data-fractions", default=None, help="e.g. 0.1,1.0; None = transfer.data_fractions")
    p.add_argument("--out", required=True, help="run folder (metrics.json, predictions, config)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_args(p, CONFIG_SECTIONS["transfer"])
    p.set_defaults(func=cmd_transfer)

    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser in its own namespace (`_parser`), so a stray argument is reported with that
    command's usage line, not the top-level one."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_parsers(sub)


# errors that mean bad input, each reported in one line (exit 2): (module, class). Looked up only in modules
# already imported (an error of a module never imported cannot have been raised), so that `qclip --help` and a
# config error import none of torch, open_clip or timm
USER_ERRORS = (("qclip.config", "ConfigError"), ("qclip.data.importers", "IngestError"),
               ("qclip.data.skips", "TooManyBadSamples"), ("qclip.data.shards", "ShardIntegrityError"),
               ("qclip.atomic", "OutputFolderError"), ("qclip.data.dense", "DenseDataError"),
               ("qclip.data.policy", "PolicyError"), ("qclip.models.factory", "ModelError"),
               ("qclip.train.shard_dataset", "TrainDataError"), ("qclip.models.checkpoint", "UnsafeCheckpoint"),
               ("qclip.captions.captioners", "CaptionerError"), ("qclip.transfer.encoders", "EncoderError"),
               ("qclip.models.hub", "HubError"), ("qclip.report.build", "ReportError"))


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, FileNotFoundError):
        return True
    return any(mod in sys.modules and isinstance(e, getattr(sys.modules[mod], name)) for mod, name in USER_ERRORS)


# commands whose --out names a file (the others write a folder there)
OUT_IS_FILE = ("eval",)
# commands whose --out is a run folder they claim (provenance.claim_output_folder); the dataset writers (ingest,
# caption run / score, teacher) stage a new dataset and replace only a qclip dataset (data.shards.ensure_replaceable)
CLAIMS_OUT = ("run", "world", "pretrain", "transfer", "export")


def check_out(args: argparse.Namespace) -> None:
    """--out of the right kind before any work: a folder for every command but those writing one file (eval),
    which refuse an existing folder. (Before, `qclip world --out FILE` raised FileExistsError and `qclip eval
    --out DIR` IsADirectoryError after its evaluation had run.)"""
    out = getattr(args, "out", None)
    if not out:
        return
    path = Path(out)
    if args.command in OUT_IS_FILE and path.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; qclip {args.command} writes one JSON file there: name a file "
                          f"(e.g. {path / 'eval.json'})")
    if args.command not in OUT_IS_FILE and path.exists() and not path.is_dir():
        raise ConfigError(f"--out '{out}' is a file; qclip {args.command} writes a folder there: name a folder "
                          f"(the file is left as it is)")
    if args.command in CLAIMS_OUT or (args.command == "caption" and getattr(args, "action", "") == "train"):
        from .provenance import check_output_folder

        check_output_folder(path)  # refused before any work; the command claims it when it starts writing


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after options of a subcommand with its own positionals (qclip caption train --data D
    # captioner.steps=10), where argparse has already closed the positional list: collect them here
    args, unknown = parser.parse_known_args(argv)
    stray = [u for u in unknown if "=" not in u or u.startswith("-")]
    if stray:
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        args.overrides = [*getattr(args, "overrides", []), *unknown]
    try:
        check_out(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"qclip {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if is_user_error(e):
            print(f"qclip {args.command}: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            import errno

            # a disk that is full or cannot be written: one line naming the path, not a traceback
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            print(f"qclip {args.command}: error: cannot write {e.filename or 'the output'}: {e.strerror}; free "
                  f"space, fix permissions or choose another --out (finished work is kept; re-run to resume)",
                  file=sys.stderr)
            return 2
        # damaged weights (a safetensors header that lies) or a pickle that needs code, reached through
        # open_clip or timm's own loaders: refused in one line, as qclip's own loader refuses them
        import pickle

        from safetensors import SafetensorError

        if not isinstance(e, (SafetensorError, pickle.UnpicklingError)):
            raise
        print(f"qclip {args.command}: error: refused to load weights: {type(e).__name__}: {e} (a damaged "
              f"safetensors file, or a pickle that needs code to load: convert it to safetensors where it is "
              f"trusted)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
