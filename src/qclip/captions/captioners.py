"""Captioners: `caption(images, n, sampling) -> list[list[str]]`, batched.

Backends:
- open_clip CoCa (any CoCa that open_clip builds: `coca_ViT-L-14:mscoco_finetuned_laion2B-s13B-b90k` on a user's
  machine, or a `local-dir:` folder such as a CoCa trained by qclip). Generation is open_clip's `CoCa.generate`,
  which needs `transformers<4.56` (4.56 removed the BeamSearchScorer it imports; a dependency of qclip).
- Hugging Face image-to-text models, `hf:NAME_OR_DIR` (BLIP, BLIP-2, GIT, Florence-2, ...). transformers 5 removed
  `pipeline("image-to-text")` and `AutoModelForVision2Seq`, so we pick the model class from the config's
  `model_type` and call `generate()` on whole batches. Remote code (Florence-2 before transformers had it) runs
  only when the user passes `trust_remote_code=True` (`qclip caption run --trust-remote-code`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from ..models.vocab import WordTokenizer


class CaptionerError(RuntimeError):
    """A captioner that cannot be built or run here; the message says what to install or change."""


@dataclass(frozen=True)
class Sampling:
    method: str = "beam"  # beam | nucleus
    num_beams: int = 4
    top_p: float = 0.9
    temperature: float = 1.0
    max_len: int = 30
    min_len: int = 3

    def __post_init__(self) -> None:
        if self.method not in ("beam", "nucleus"):
            raise ValueError(f"sampling method must be 'beam' or 'nucleus', got '{self.method}'")


class Captioner(Protocol):
    """`id` names its captions (captions.synthetic[id]); a `model` attribute (torch module), where there is one,
    fingerprints its weights so a resumed `caption run` never mixes two captioners' output."""

    id: str

    def caption(self, images: list[Image.Image], n: int, sampling: Sampling) -> list[list[str]]:
        """`n` captions for each image; an empty generation is returned as '' (never replaced)."""
        ...


def _clean(text: str) -> str:
    text = text.replace("<start_of_text>", "").split("<end_of_text>")[0]
    return " ".join(text.replace("!", " ").split()).strip(" .").strip()


class OpenClipCoCaCaptioner:
    """Captions with an open_clip CoCa model. With beam search the first caption is the beam result and the
    others (n > 1) are drawn by nucleus sampling, as a single beam search yields one caption per image."""

    def __init__(self, spec: str, pretrained: str | None = None, device: str = "cpu", captioner_id: str = "") -> None:
        from open_clip import coca_model

        if not coca_model._has_transformers:
            raise CaptionerError("open_clip CoCa generation needs transformers<4.56: "
                                 "pip install 'transformers>=4.45,<4.56'")
        from ..models import create_clip

        self.bundle = create_clip(spec, pretrained=pretrained, device=device)
        if not hasattr(self.bundle.model, "generate"):
            raise CaptionerError(f"'{spec}' is not a CoCa model (no text decoder); use a coca_* config")
        self.model = self.bundle.model.eval()
        self.device = device
        # a word vocabulary (qclip's in-repo captioner) replaces open_clip's BPE tokenizer
        self.vocab = self.bundle.tokenizer if isinstance(self.bundle.tokenizer, WordTokenizer) else None
        self.id = captioner_id or spec.replace("local-dir:", "").rstrip("/").split("/")[-1].replace(":", "_")

    @torch.no_grad()
    def _generate(self, pixels: torch.Tensor, s: Sampling, beam: bool) -> list[str]:
        import open_clip

        kw = dict(seq_len=s.max_len, min_seq_len=s.min_len, temperature=s.temperature)
        if self.vocab is not None:
            kw.update(sot_token_id=self.vocab.sot_id, eos_token_id=self.vocab.eot_id, pad_token_id=self.vocab.pad_id)
        if beam and s.num_beams == 1:  # greedy: open_clip's beam search needs 2+ beams
            out = self.model.generate(pixels, generation_type="top_k", top_k=1, **kw)
        elif beam:
            out = self.model.generate(pixels, generation_type="beam_search", num_beams=s.num_beams,
                                      num_beam_groups=1, **kw)
        else:
            out = self.model.generate(pixels, generation_type="top_p", top_p=s.top_p, **kw)
        if self.vocab is not None:
            return [_clean(self.vocab.decode(o)) for o in out]
        return [_clean(open_clip.decode(o)) for o in out]

    def caption(self, images: list[Image.Image], n: int, sampling: Sampling) -> list[list[str]]:
        pixels = torch.stack([self.bundle.preprocess_val(im) for im in images]).to(self.device)
        rounds = [self._generate(pixels, sampling, beam=(sampling.method == "beam" and k == 0)) for k in range(n)]
        return [[r[i] for r in rounds] for i in range(len(images))]


# model_type -> transformers class name; anything else falls back to AutoModelForImageTextToText
HF_MODEL_CLASSES = {
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
    "instructblip": "InstructBlipForConditionalGeneration",
    "git": "GitForCausalLM",
    "florence2": "Florence2ForConditionalGeneration",
}
# Florence-2 is steered by a task token instead of a free prompt
HF_DEFAULT_PROMPTS = {"florence2": "<MORE_DETAILED_CAPTION>"}


class HFImageToTextCaptioner:
    """Captions with a Hugging Face image-to-text model (`hf:Salesforce/blip-image-captioning-large`, a local
    `save_pretrained` folder, ...). Beam search gives one caption per image; further captions are sampled."""

    def __init__(self, name: str, device: str = "cpu", captioner_id: str = "", prompt: str | None = None,
                 trust_remote_code: bool = False) -> None:
        try:
            import transformers
        except ImportError as e:
            raise CaptionerError("Hugging Face captioners need transformers: "
                                 "pip install 'transformers>=4.45,<4.56'") from e
        try:
            config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise CaptionerError(f"cannot load Hugging Face model '{name}': {e}. Offline, pass a local folder "
                                 f"written by save_pretrained (hf:/path/to/model)") from e
        except ValueError as e:
            if "trust_remote_code" in str(e):
                raise CaptionerError(f"'{name}' needs its own code from the hub; if you trust it, pass "
                                     f"--trust-remote-code") from e
            raise
        cls_name = HF_MODEL_CLASSES.get(config.model_type, "AutoModelForImageTextToText")
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            if not trust_remote_code:
                raise CaptionerError(f"transformers {transformers.__version__} has no {cls_name} for '{name}'; "
                                     f"upgrade transformers or pass --trust-remote-code")
            cls = transformers.AutoModelForCausalLM
        self.model = cls.from_pretrained(name, trust_remote_code=trust_remote_code).to(device).eval()
        self.processor = transformers.AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        self.prompt = prompt if prompt is not None else HF_DEFAULT_PROMPTS.get(config.model_type)
        self.device = device
        self.id = captioner_id or name.rstrip("/").split("/")[-1]

    @torch.no_grad()
    def _generate(self, images: list[Image.Image], s: Sampling, beam: bool) -> list[str]:
        kw = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            kw["text"] = [self.prompt] * len(images)
        inputs = {k: v.to(self.device) for k, v in self.processor(**kw).items()}
        gen = dict(max_new_tokens=s.max_len, min_new_tokens=s.min_len)
        if beam:
            gen.update(num_beams=s.num_beams, do_sample=False)
        else:
            gen.update(do_sample=True, top_p=s.top_p, temperature=s.temperature, num_beams=1)
        out = self.model.generate(**inputs, **gen)
        if self.prompt and "input_ids" in inputs and not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1]:]  # decoder-only models echo the prompt
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [_clean(t) for t in texts]

    def caption(self, images: list[Image.Image], n: int, sampling: Sampling) -> list[list[str]]:
        images = [im.convert("RGB") for im in images]
        rounds = [self._generate(images, sampling, beam=(sampling.method == "beam" and k == 0)) for k in range(n)]
        return [[r[i] for r in rounds] for i in range(len(images))]


def create_captioner(spec: str, pretrained: str | None = None, device: str = "cpu", captioner_id: str = "",
                     trust_remote_code: bool = False) -> Captioner:
    """`hf:NAME_OR_DIR` (transformers image-to-text), `coca:NAME` / a CoCa open_clip name / `local-dir:PATH`
    (open_clip CoCa)."""
    from ..models.factory import parse_spec

    source, name = parse_spec(spec)
    if source == "hf":
        return HFImageToTextCaptioner(name, device=device, captioner_id=captioner_id,
                                      trust_remote_code=trust_remote_code)
    name = name if source == "coca" else spec
    return OpenClipCoCaCaptioner(name, pretrained=pretrained, device=device, captioner_id=captioner_id)
