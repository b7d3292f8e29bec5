"""A word-level tokenizer for small closed vocabularies (the embedded world's descriptions).

Why not open_clip's BPE tokenizer for the in-repo captioner: its 49,408-way output layer is 99% of the
decoder's compute at this size (a CPU step would take seconds); the world's descriptions use ~100 words.
The interface matches open_clip's tokenizers: `tok(texts) -> LongTensor[n, context_length]`, `tok.decode(ids)`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import torch

PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    def __init__(self, vocab: list[str], context_length: int = 32) -> None:
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.context_length = context_length
        self.pad_id, self.sot_id, self.eot_id, self.unk_id = (self.index[t] for t in (PAD, SOT, EOT, UNK))

    @classmethod
    def from_texts(cls, texts: Iterable[str], context_length: int = 32) -> "WordTokenizer":
        seen = sorted({w for t in texts for w in words(t)})
        return cls([PAD, SOT, EOT, UNK] + seen, context_length)

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.sot_id] + [self.index.get(w, self.unk_id) for w in words(t)][: self.context_length - 2]
            ids.append(self.eot_id)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                break
            if i in (self.pad_id, self.sot_id):
                continue
            out.append(self.vocab[i] if 0 <= i < len(self.vocab) else UNK)
        text = " ".join(out)
        return re.sub(r" ([.,;:!?])", r"\1", text)

    def save(self, path: str | Path) -> None:
        from ..atomic import atomic_write_json

        atomic_write_json(path, {"vocab": self.vocab, "context_length": self.context_length})

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["vocab"], d["context_length"])
