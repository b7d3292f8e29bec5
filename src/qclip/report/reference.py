"""A run set among a reference run's seeds: where a one-seed study's numbers fall among, say, the committed
five-seed headline's (`study.reference`), so a single measurement is read against the spread it comes from."""
from __future__ import annotations

import json
from pathlib import Path

from .findings import HEADLINE, aggregate

# keys whose difference says nothing about the numbers: where the reference lives, how many seeds and which
# other methods each ran, how fast it went
_UNCOMPARED = {"study.reference", "study.seeds", "study.methods", "seed", "world.workers", "study.caption_batch_size"}


def _compared(key: str) -> bool:
    from ..config import PERFORMANCE_KEYS, PERFORMANCE_TRANSFER_KEYS

    section, _, name = key.partition(".")
    return key not in _UNCOMPARED and not (section == "pretrain" and name in PERFORMANCE_KEYS) and not (
        section == "transfer" and name in (*PERFORMANCE_TRANSFER_KEYS, "workers", "eval_batch_size"))


def load_reference(path: str | Path) -> dict:
    """The results of a reference run: a results.json, or a study folder holding one."""
    from .build import ReportError

    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    try:
        results = json.loads(f.read_text())
    except OSError as e:
        raise ReportError(f"study.reference: cannot read {f} ({e.strerror}); give a results.json or the folder "
                          f"of a `qclip run` that holds one, or leave study.reference empty") from None
    except ValueError as e:
        raise ReportError(f"study.reference: {f} is not complete JSON ({e}); give another results.json or leave "
                          f"study.reference empty") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ReportError(f"study.reference: {f} holds no \"rows\" list: it is not a `qclip run` results file")
    return results


def _by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows per dense dataset ("" for the world's): a value is only ever placed among the same dataset's."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("dataset", ""), []).append(r)
    return out


def placements(rows: list[dict], reference_rows: list[dict]) -> list[dict]:
    """Per (dataset, encoder, method, task) that both runs measured: this run's value (mean over its seeds) at the
    largest labelled fraction both share, the reference's per-seed values there, and how many of them this run
    beats."""
    refs = _by_dataset(reference_rows)
    out = []
    for dataset, own in _by_dataset(rows).items():
        if dataset not in refs:
            continue
        mine, ref = aggregate(own), aggregate(refs[dataset])
        for enc, m, task in dict.fromkeys(k[:3] for k in mine):
            common = [k[3] for k in mine if k[:3] == (enc, m, task) and (enc, m, task, k[3]) in ref]
            if not common:
                continue
            f = max(common)
            by_seed = ref[(enc, m, task, f)]["by_seed"]
            value, sign = mine[(enc, m, task, f)]["mean"], HEADLINE[task][1]
            out.append({"dataset": dataset, "encoder": enc, "method": m, "task": task, "metric": HEADLINE[task][0],
                        "fraction": f, "value": value, "reference": list(by_seed.values()),
                        "reference_seeds": list(by_seed), "beats": sum(sign * (value - v) > 0 for v in by_seed.values())})
    return out


def gain_placements(rows: list[dict], reference_rows: list[dict], a: str = "clip-synthetic",
                    b: str = "clip-raw") -> list[dict]:
    """`a`'s relative change over `b` in percent (positive = better) in this run, against the same change seed by
    seed in the reference: the headline comparison's own spread."""
    found = {(p["dataset"], p["encoder"], p["task"], p["method"]): p for p in placements(rows, reference_rows)}
    refs = _by_dataset(reference_rows)
    out = []
    for (dataset, enc, task, m), p in found.items():
        q = found.get((dataset, enc, task, b))
        if m != a or q is None or q["fraction"] != p["fraction"] or not q["value"]:
            continue
        sign, ref = HEADLINE[task][1], aggregate(refs[dataset])
        ref_a, ref_b = (ref[(enc, x, task, p["fraction"])]["by_seed"] for x in (a, b))
        gains = [sign * (ref_a[s] - ref_b[s]) / abs(ref_b[s]) * 100 for s in sorted(set(ref_a) & set(ref_b))
                 if ref_b[s]]
        mine = sign * (p["value"] - q["value"]) / abs(q["value"]) * 100
        out.append({"dataset": dataset, "encoder": enc, "task": task, "comparison": f"{a} vs {b}",
                    "fraction": p["fraction"], "value": mine, "reference": gains, "beats": sum(mine > g for g in gains)})
    return out


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("encoder_train", "given"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(config: dict, reference_config: dict) -> list[str]:
    """The settings that decide results in which the two runs differ ("pretrain.steps: 1200 here, 3600 in the
    reference"); keys one of them did not record (an older qclip) and keys of speed alone left out."""
    a, b = _flat(config or {}), _flat(reference_config or {})
    return [f"{k}: {a[k]} here, {b[k]} in the reference" for k in sorted(set(a) & set(b))
            if _compared(k) and a[k] != b[k]]
