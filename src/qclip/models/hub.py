"""`qclip push`: a trained model folder to the Hugging Face Hub, loadable as open_clip's `hf-hub:REPO`.

The folder qclip writes (`RUN/model`: open_clip_config.json + open_clip_model.safetensors) is already what
open_clip's hub loader reads; this adds a model card (README.md) with how it was trained and how to load it,
and the run's config.yaml / run.json / summary.json for provenance. `dry_run` stages the upload and uploads
nothing (no network, no token).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atomic import atomic_write_text, remove_tree
from .checkpoint import MODEL_CONFIG

PROVENANCE = ("config.yaml", "run.json", "summary.json")


class HubError(ValueError):
    """A folder that is not a qclip model, or a repo id the Hub would refuse."""


def model_card(repo_id: str, model_dir: Path, run_dir: Path | None) -> str:
    cfg = json.loads((model_dir / MODEL_CONFIG).read_text())
    vision = cfg.get("model_cfg", {}).get("vision_cfg", {})
    tower = vision.get("timm_model_name") or f"ViT (width {vision.get('width')}, patch {vision.get('patch_size')})"
    summary = json.loads((run_dir / "summary.json").read_text()) if run_dir and (run_dir / "summary.json").is_file() else {}
    if "steps" in summary and "late_loss" in summary:
        trained = f"{summary['steps']} steps, contrastive loss {summary['late_loss']:.3f} over the last fifth of them"
    elif "steps" in summary and "final_loss" in summary:  # a run from before late_loss was recorded
        trained = f"{summary['steps']} steps, final contrastive loss {summary['final_loss']:.3f}"
    else:
        trained = "see run.json"
    uses_qclip = "qclip" in json.dumps(cfg)
    return f"""---
library_name: open_clip
tags: [clip, qclip, open_clip]
---
# {repo_id}

A CLIP model trained with qclip (CLIP with quality captions): image tower `{tower}`,
image size {vision.get('image_size')}, {trained}. The run's `config.yaml` and `run.json` (versions, git commit,
data) are beside the weights.

```python
{"import qclip.models  # registers the qclip presets and towers with open_clip and timm" + chr(10) if uses_qclip else ""}import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:{repo_id}")
tokenizer = open_clip.get_tokenizer("hf-hub:{repo_id}")
```
"""


def push_to_hub(model_dir: str | Path, repo_id: str, private: bool = False, dry_run: bool = False,
                token: str | None = None, staging: str | Path | None = None) -> dict:
    """Upload `model_dir` (+ card and provenance) to `repo_id`; with `dry_run`, only stage it. Returns what was
    (or would be) uploaded."""
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_CONFIG).is_file():
        raise HubError(f"{model_dir} is not a qclip model folder (no {MODEL_CONFIG}); pass RUN/model")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"repo id '{repo_id}' must be OWNER/NAME")
    run_dir = model_dir.parent if (model_dir.parent / "run.json").is_file() else None
    stage = Path(staging) if staging else model_dir.parent / ".hub_upload"
    remove_tree(stage)
    stage.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, stage / f.name)
    for name in PROVENANCE:
        if run_dir and (run_dir / name).is_file():
            shutil.copy2(run_dir / name, stage / name)
    atomic_write_text(stage / "README.md", model_card(repo_id, model_dir, run_dir))
    files = sorted(p.name for p in stage.iterdir())
    result = {"repo_id": repo_id, "files": files, "staged": str(stage), "uploaded": False}
    if dry_run:
        return result
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(stage), repo_type="model",
                             commit_message="qclip push")
    remove_tree(stage)
    result.update(uploaded=True, url=str(getattr(info, "commit_url", info)), staged="")
    return result
