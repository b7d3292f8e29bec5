import numpy as np
import pytest

from qclip.data.policy import CaptionPolicy, PolicyError

META = {
    "captions": {"raw": ["alt one", ""], "reference": ["ref a"],
                 "synthetic": {"coca": ["syn a", "syn b", ""], "blip": ["blip a"]}},
    "scores": {"clip": {"raw": [0.31, 0.0], "coca": [0.2, 0.35, 0.0], "blip": [0.5]}},
}


def draws(spec, meta=META, n=400):
    pol = CaptionPolicy.parse(spec)
    cands, reason = pol.candidates(meta)
    assert reason is None
    rng = np.random.default_rng(0)
    return pol, [tuple(pol.choose(cands, rng)) for _ in range(n)]


def test_parse_and_errors():
    assert CaptionPolicy.parse("mix:0.8:coca") == CaptionPolicy("mix", captioner="coca", p=0.8)
    assert CaptionPolicy.parse("filter:0.28:clip") == CaptionPolicy("filter", threshold=0.28, scorer="clip")
    for bad in ["mix", "mix:2", "raw:x", "filter", "nonsense", "synthetic:a:b"]:
        with pytest.raises(PolicyError, match="raw, reference, synthetic"):
            CaptionPolicy.parse(bad)


def test_raw_reference_synthetic():
    _, d = draws("raw")
    assert set(d) == {("alt one",)}  # empty alt-text is never a candidate
    _, d = draws("reference")
    assert set(d) == {("ref a",)}
    _, d = draws("synthetic:coca")
    assert set(d) == {("syn a",), ("syn b",)}  # empty generations are not used, nor replaced by raw text
    _, d = draws("synthetic")
    assert set(d) == {("syn a",), ("syn b",), ("blip a",)}


def test_mix_probability():
    _, d = draws("mix:0.8:coca", n=2000)
    frac = sum(t[0].startswith("syn") for t in d) / len(d)
    assert 0.76 < frac < 0.84 and {t[0] for t in d} == {"alt one", "syn a", "syn b"}
    _, d = draws("mix:0.0:coca")
    assert set(d) == {("alt one",)}


def test_both_gives_raw_and_synthetic():
    pol, d = draws("both:coca")
    assert pol.num_texts == 2 and all(r == "alt one" and s in ("syn a", "syn b") for r, s in d)


def test_filter_keeps_good_raw_else_good_synthetic():
    _, d = draws("filter:0.3")  # raw 0.31 passes
    assert set(d) == {("alt one",)}
    _, d = draws("filter:0.33:clip")  # raw fails; coca 'syn b' (0.35) and blip (0.5) pass
    assert set(d) == {("syn b",), ("blip a",)}
    pol = CaptionPolicy.parse("filter:0.9")
    assert pol.candidates(META) == (None, "below score threshold")
    assert pol.candidates({"captions": META["captions"]}) == (None, "no caption scores")


def test_missing_texts_drop_the_sample_with_a_reason():
    empty = {"captions": {"raw": [""], "synthetic": {}}}
    assert CaptionPolicy.parse("raw").candidates(empty) == (None, "no raw caption")
    assert CaptionPolicy.parse("synthetic").candidates(empty) == (None, "no synthetic caption")
    assert CaptionPolicy.parse("both").candidates({"captions": {"raw": ["x"]}}) == (None, "no synthetic caption")
    assert CaptionPolicy.parse("mix:0.5").candidates(empty) == (None, "no caption")
    only_raw = {"captions": {"raw": ["x"]}}
    pol = CaptionPolicy.parse("mix:0.9")
    cands, _ = pol.candidates(only_raw)
    assert pol.choose(cands, np.random.default_rng(0)) == ["x"]  # no synthetic yet: raw, never an empty string
