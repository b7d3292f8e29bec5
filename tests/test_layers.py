"""The package's layers, read from its imports: no module imports from a layer above its own."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qclip"
# lowest first; a module may import its own layer or any below it
LAYERS = [{"atomic", "config", "provenance"}, {"data", "models", "optim"}, {"train", "evaluate"},
          {"captions", "transfer"}, {"report"}, {"study"}, {"cli", "__main__"}]


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _top(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _imported_tops(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = path.relative_to(SRC).parent.parts  # the module's package inside qclip
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - (node.level - 1)]) if node.level > 1 else list(pkg)
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                out.add(parts[0])
            else:  # `from . import x` at the package root
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qclip."):
            out.add(node.module.split(".")[1])
    return out


def test_imports_run_down_the_layers():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        top = _top(path)
        if top == "__init__":
            continue
        for dep in _imported_tops(path) - {top, "__init__"}:
            if dep in {n for names in LAYERS for n in names} and _layer(dep) > _layer(top):
                bad.append(f"{path.relative_to(SRC)} imports {dep}")
    assert not bad, "imports running up the layers:\n" + "\n".join(bad)


def test_one_spec_parser():
    """Model specs are read by models.factory.parse_spec only (as timm's parse_model_name), not sliced by hand."""
    import re
    from pathlib import Path

    from qclip.models.factory import parse_spec

    assert parse_spec("timm:vit_base_patch16_224.mae") == ("timm", "vit_base_patch16_224.mae")
    assert parse_spec("random:timm:resnet18") == ("random", "timm:resnet18")
    assert parse_spec("local-dir:/a/b:c") == ("local-dir", "/a/b:c")
    assert parse_spec("hf:Salesforce/blip") == ("hf", "Salesforce/blip")
    assert parse_spec("ViT-B-16:datacomp_xl_s13b_b90k") == ("", "ViT-B-16:datacomp_xl_s13b_b90k")
    src = Path(__file__).resolve().parents[1] / "src" / "qclip"
    sliced = re.compile(r'(startswith|\[len)\(\s*"(timm|random|local-dir|hf|coca):"')
    offenders = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if sliced.search(line)]
    assert offenders == []
