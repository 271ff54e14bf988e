"""Imports point one way (DESIGN.md): models (and data beside them) → checkpoints/lora → pipelines → server/cli, training
and evaluation beside pipelines (evaluation does not import training); nothing imports cli. Read from the source with
ast, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "latentdiff"

# package → the packages it must not import
FORBIDDEN = {
    "models": {"checkpoints", "lora", "pipelines", "training", "evaluation", "bench", "server", "cli"},
    "data": {"checkpoints", "lora", "pipelines", "training", "evaluation", "bench", "server", "cli"},
    "checkpoints": {"pipelines", "training", "evaluation", "bench", "server", "cli"},
    "lora": {"pipelines", "training", "evaluation", "bench", "server", "cli"},
    "pipelines": {"training", "evaluation", "bench", "server", "cli"},
    "training": {"bench", "server", "cli"},
    "evaluation": {"training", "bench", "server", "cli"},
    "bench": {"server", "cli"},
    "server": {"bench", "cli"},
}

# Back-pointing imports tolerated for now (none today); the test fails when one is added and when a listed one is
# mended but left listed, so the list only shrinks.
KNOWN: set[tuple[str, str]] = set()


def imported_modules(path: Path) -> set[str]:
    """The latentdiff modules a module imports, dotted (absolute or relative, top-level or inside functions)."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts  # ("pipelines", "images")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(rel[:-1])[: len(rel) - node.level] if node.level > 1 else list(rel[:-1])
                names = [".".join(["latentdiff", *base, *(node.module.split(".") if node.module else [])])]
                if not node.module:
                    names = [".".join(["latentdiff", *base, a.name]) for a in node.names]
            elif node.module:
                names = [node.module]
        out |= {name for name in names if name.startswith("latentdiff.")}
    return out


def imported_packages(path: Path) -> set[str]:
    """The latentdiff subpackages a module imports (absolute or relative, top-level or inside functions)."""
    return {name.split(".")[1] for name in imported_modules(path)}


def test_imports_point_one_way():
    found = set()
    for pkg, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / pkg).rglob("*.py")):
            for bad in imported_packages(path) & forbidden:
                found.add((path.relative_to(PACKAGE).as_posix(), bad))
    assert found - KNOWN == set(), f"imports pointing up a layer: {sorted(found - KNOWN)}"
    assert KNOWN - found == set(), f"mended, now remove from KNOWN: {sorted(KNOWN - found)}"


def test_the_checker_sees_relative_and_lazy_imports():
    assert "data" in imported_packages(PACKAGE / "evaluation" / "evaluate.py")        # a relative import
    assert "sampler_names" in imported_packages(PACKAGE / "checkpoints" / "loader.py")  # a lazy relative import
    assert "checkpoints" in imported_packages(PACKAGE / "cli" / "generate.py")         # a top-level relative import


# The low layer: modules every layer may import, which import nothing of ours but `errors` (and each other).
LOW = ("errors", "fileio", "imaging", "diffusion", "defaults", "charts")


def test_the_low_layer_imports_nothing_above_it():
    for name in LOW:
        assert imported_packages(PACKAGE / f"{name}.py") <= set(LOW), name


# Inside pipelines/: the modes share the base (base.py) and the helper modules and never import each other; the
# helpers import no mode; pipeline.py alone assembles LatentDiffusionPipeline from them (and the package's lazy
# re-export of that class points at it).
MODES = {"text_to_image", "image_to_image", "inpaint", "hires"}
ASSEMBLY = {"pipeline", "__init__"}
# text_to_image's module __getattr__ hands out the class from its old home, for one release.
REEXPORTS = {("text_to_image", "pipeline")}


def pipelines_imports(path: Path) -> set[str]:
    """The modules of latentdiff/pipelines/ that one of its modules imports (by file stem)."""
    return {name.split(".")[2] for name in imported_modules(path) if name.startswith("latentdiff.pipelines.")}


def test_pipeline_modes_import_only_the_shared_part():
    found = set()
    for path in sorted((PACKAGE / "pipelines").glob("*.py")):
        if path.stem not in ASSEMBLY:
            found |= {(path.stem, other) for other in pipelines_imports(path) & (MODES | {"pipeline"}) if other != path.stem}
    assert found == REEXPORTS, f"mode modules imported from outside pipeline.py: {sorted(found - REEXPORTS)}"
    assert pipelines_imports(PACKAGE / "pipelines" / "pipeline.py") >= {"base", "text_to_image", "image_to_image", "inpaint"}
    assert {"base", "image_latents"} <= pipelines_imports(PACKAGE / "pipelines" / "inpaint.py")  # the checker sees them
