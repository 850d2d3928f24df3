"""The shape of the code: the package has no import cycle and no module reaches into another's
private names; nothing patches Snakemake or touches `.snakemake/`; the rules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scripts" / "nano_banana_aug"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import of the module, function-local ones too."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, []) if sub in known else (base, [alias.name]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return [(m, names) for m, names in found if m in known and m != name]


def test_the_package_has_no_import_cycle():
    known = modules()
    graph = {m: {t for t, _ in imports(m, p, known) if t != "nano_banana_aug"} for m, p in known.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_module_imports_another_modules_private_names():
    known = modules()
    bad = []
    for m, p in known.items():
        for target, names in imports(m, p, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or target.rsplit(".", 1)[-1].startswith("_") and not target.endswith("__init__"):
                bad.append(f"{m} imports {private or target} from {target}")
    assert bad == []


def test_nothing_patches_snakemake_or_touches_its_metadata():
    for path in [*PACKAGE.rglob("*.py"), ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]:
        text = path.read_text(encoding="utf-8")
        assert ".snakemake" not in text.replace("snakemake.", ""), path
        # Snakemake's public helpers only (snakemake.utils), never its internals
        used = set(re.findall(r"^\s*(?:from|import) (snakemake\.[\w.]+)", text, re.M))
        assert used <= {"snakemake.utils"}, (path, used)
        # no assignment to an attribute of anything imported from snakemake
        assert not re.search(r"\b(Job|DAG|FilePersistence|Workflow)\.\w+\s*=", text), path


def test_rules_hold_rules_and_small_input_functions():
    common = (ROOT / "rules" / "common.smk").read_text(encoding="utf-8")
    assert len(common.splitlines()) <= 250
    for smk in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]:
        tree = ast.parse(_python_part(smk.read_text(encoding="utf-8")))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 25, f"{smk.name}: {node.name} is {length} lines: move it into the package"


def _python_part(text: str) -> str:
    """The plain Python of a Snakefile (rule blocks and directives dropped)."""
    keep, skipping = [], False
    for line in text.splitlines():
        head = re.match(
            r"^(rule|checkpoint|localrules|wildcard_constraints|envvars|include|configfile|onstart|onsuccess|onerror|min_version|workdir)\b",
            line,
        )
        if head:
            skipping = True
            keep.append("")
            continue
        if skipping and (not line.strip() or line.startswith((" ", "\t"))):
            keep.append("")
            continue
        skipping = False
        keep.append(line)
    return "\n".join(keep)
