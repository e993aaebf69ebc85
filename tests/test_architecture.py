"""The import rules of docs/ARCHITECTURE.md ("Packages and what each may import"), enforced.

Reads every module's imports with `ast` (module level and inside functions alike) and checks:
the model layer is plain PyTorch; `data_prep` uses nothing of `pretrain` but its three leaf
modules; the leaf modules import no other project module; nothing outside `pretrain/finetune/`
imports it, except training's optional downstream evaluation and bert-export's fine-tuned side;
callbacks import no app; no import cycle among the project's modules (deferred imports included);
every module opens with a docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("pretrain", "data_prep")
FRAMEWORKS = ("lightning", "deepspeed", "hydra", "omegaconf", "datasets", "tokenizers", "wandb")
PLAIN_TORCH = ("pretrain.model", "pretrain.linear", "pretrain.masking")
LEAVES = ("pretrain.errors", "pretrain.config_keys", "pretrain.config_path")
"""Dependency-free helpers that `data_prep` may use: the error type, the unknown-key check and
where the YAML lives."""
# Command-line apps whose modules hold nothing a library module needs (bert-consolidate's module
# is also the consolidation library, so it is not listed).
APPS = (
    "pretrain.train",
    "pretrain.export",
    "pretrain.finetune.app",
    "pretrain.finetune.predict",
    "pretrain.attention_maps",
    "pretrain.finetune.compare",  # runs bert-finetune's function many times
)
DOWNSTREAM_EVAL = "pretrain.finetune.downstream_eval"
"""The one way into fine-tuning from pretraining: the optional evaluation callback, imported by
`pretrain.train` only when `eval_downstream.every_n_steps` is set."""
FINETUNED_EXPORT = "pretrain.finetune.hf_export"
"""The fine-tuned side of `bert-export`, imported by `pretrain.export` only for a fine-tuned run."""
DEFERRED_INTO_FINETUNING = {
    ("pretrain.train", DOWNSTREAM_EVAL),
    ("pretrain.export", FINETUNED_EXPORT),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        for p in sorted((REPO / package).rglob("*.py"))
        if p.name != "__main__.py"
    }


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = project_modules()
IMPORTS = {m: imports_of(p) for m, p in MODULES.items()}


def project_imports(module: str) -> set[str]:
    """Project modules that `module` imports (the code imports modules by their full name)."""
    return {name for name, _ in IMPORTS[module] if name in MODULES}


@pytest.mark.parametrize("module", PLAIN_TORCH)
def test_the_model_layer_is_plain_pytorch(module):
    bad = [n for n, _ in IMPORTS[module] if any(within(n, f) for f in FRAMEWORKS)]
    assert not bad, f"{module} imports {bad}: the model must run with torch alone"


def test_data_prep_uses_only_the_leaf_modules_of_pretrain():
    for module in (m for m in MODULES if within(m, "data_prep")):
        bad = [n for n, _ in IMPORTS[module] if within(n, "pretrain") and n not in LEAVES]
        assert not bad, f"{module} imports {bad}; data_prep may use only {LEAVES}"
        heavy = [n for n, _ in IMPORTS[module] if within(n, "lightning") or within(n, "deepspeed")]
        assert not heavy, f"{module} imports {heavy}: data preparation needs no trainer"


@pytest.mark.parametrize("module", LEAVES)
def test_leaf_modules_import_no_other_project_module(module):
    assert project_imports(module) <= {"pretrain.errors"}, project_imports(module)


def test_only_finetuning_and_the_downstream_callback_reach_into_finetuning():
    for module in MODULES:
        if within(module, "pretrain.finetune"):
            continue
        for name, top_level in IMPORTS[module]:
            if not within(name, "pretrain.finetune"):
                continue
            assert (module, name) in DEFERRED_INTO_FINETUNING and not top_level, (
                f"{module} imports {name}: pretraining reaches fine-tuning only through "
                f"{DOWNSTREAM_EVAL} (train) and {FINETUNED_EXPORT} (export), imported when used"
            )


def test_library_modules_import_no_app():
    for module in MODULES:
        if module in APPS:
            continue
        bad = [n for n, _ in IMPORTS[module] if n in APPS]
        assert not bad, f"{module} imports the app module(s) {bad}; move what it needs out of them"


def test_no_import_cycles_at_module_level():
    graph = {m: {n for n, top in IMPORTS[m] if top and n in MODULES and n != m} for m in MODULES}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_is_for(module):
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8")))
    assert doc and doc.strip(), f"{MODULES[module]} has no opening docstring"
