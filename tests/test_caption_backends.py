"""Hugging Face image-to-text backends: BLIP and GIT built from tiny configs (random weights), saved with
save_pretrained and loaded through `hf:DIR`, so the real transformers code path runs offline."""
import numpy as np
import pytest
import transformers as T
from PIL import Image

from qclip.captions.captioners import CaptionerError, HFImageToTextCaptioner, Sampling, create_captioner

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "cube", "ball", "on", "the", "floor"]
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
              patch_size=8)


def _tokenizer(d):
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return T.BertTokenizer(str(d / "vocab.txt"), bos_token="[DEC]")


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("hf")
    tok = _tokenizer(d)
    torch.manual_seed(0)
    blip = T.BlipForConditionalGeneration(T.BlipConfig(
        vision_config=VISION, projection_dim=16,
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, encoder_hidden_size=32, bos_token_id=5, pad_token_id=0,
                         sep_token_id=3, eos_token_id=3)))
    blip.save_pretrained(d / "blip")
    T.BlipProcessor(T.BlipImageProcessor(size={"height": 32, "width": 32}), tok).save_pretrained(d / "blip")
    git = T.GitForCausalLM(T.GitConfig(
        vision_config=VISION, vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, bos_token_id=2, eos_token_id=3, pad_token_id=0, max_position_embeddings=64))
    git.save_pretrained(d / "git")
    T.GitProcessor(T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tok).save_pretrained(d / "git")
    return d


def _images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("kind, cls", [("blip", "BlipForConditionalGeneration"), ("git", "GitForCausalLM")])
def test_hf_captioner_batched_beam_and_sampling(hf_models, kind, cls):
    cap = create_captioner(f"hf:{hf_models / kind}", captioner_id=kind)
    assert isinstance(cap, HFImageToTextCaptioner) and type(cap.model).__name__ == cls and cap.id == kind
    out = cap.caption(_images(3), 2, Sampling(method="beam", num_beams=2, max_len=6, min_len=1))
    assert len(out) == 3 and all(len(c) == 2 for c in out)
    words = set(WORDS) | {""}
    assert all(set(t.split()) <= words for caps in out for t in caps)  # decoded with the model's own vocabulary
    # beam search is deterministic: the same images give the same first caption, alone or batched
    alone = cap.caption(_images(3)[:1], 1, Sampling(method="beam", num_beams=2, max_len=6, min_len=1))
    assert alone[0][0] == out[0][0]


def test_hf_captioner_offline_name_fails_clearly(tmp_path):
    with pytest.raises(CaptionerError, match="save_pretrained"):
        create_captioner(f"hf:{tmp_path / 'no-such-model'}")
