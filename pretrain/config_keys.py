"""Refuse config keys that the typed schema of an app does not have.

Hydra's struct mode refuses `trainer.max_stepz=5`, and its error suggests `+trainer.max_stepz=5`,
which Hydra then adds under `open_dict`. `OmegaConf.to_object` builds each dataclass from its
fields and `setattr`s every other key on the instance as a plain attribute, which
`dataclasses.asdict` (and so the saved config.yaml) never sees: the key silently vanishes and the
run uses the default. `check_known_keys` walks the composed config against the schema first and
names what the schema lacks, for every app (pretrain, finetune, tokenizer, prep, export).

Fields typed as a mapping (`dict[str, Any]`, e.g. `eval_downstream.task_fields`) or `Any` accept
any keys: their contents are checked where they are used.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrain.errors import UserError


@functools.cache
def _field_types(schema: type) -> dict[str, Any]:
    """Field name -> resolved type (the schemas use `from __future__ import annotations`)."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(schema)}


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field of type `tp` holds (unwrapping `X | None`); None if it is not one."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [d for d in map(_dataclass_of, typing.get_args(tp)) if d is not None]
        return found[0] if len(found) == 1 else None
    return None


def unknown_keys(tree: Mapping, schema: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, schema it is missing from) for every key of `tree` that `schema` lacks."""
    types_ = _field_types(schema)
    found: list[tuple[str, type]] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            found.append((dotted, schema))
            continue
        sub = _dataclass_of(types_[key])
        # Only nested schemas constrain their keys; mappings and Any hold free-form contents.
        if sub is not None and isinstance(value, Mapping):
            found += unknown_keys(value, sub, f"{dotted}.")
        elif typing.get_origin(types_[key]) is list and isinstance(value, list):
            (item,) = typing.get_args(types_[key]) or (Any,)
            if (item_schema := _dataclass_of(item)) is not None:
                for i, element in enumerate(value):
                    if isinstance(element, Mapping):
                        found += unknown_keys(element, item_schema, f"{dotted}[{i}].")
    return found


def _describe(dotted: str, schema: type) -> tuple[str, str]:
    """(a "did you mean" hint or "", the fields the parent has)."""
    parent, _, leaf = dotted.rpartition(".")
    names = list(_field_types(schema))
    close = difflib.get_close_matches(leaf, names, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    return hint, f"{parent or 'the top level'} has: {', '.join(names)}"


def check_known_keys(cfg: DictConfig | Mapping, schema: type) -> None:
    """Raise a one-line `UserError` naming every key of `cfg` that `schema` does not have."""
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    found = unknown_keys(tree, schema)
    if not found:
        return
    why = "not in the schema; a typed config takes no new keys, not even with +"
    if len(found) == 1:
        ((dotted, where),) = found
        hint, fields = _describe(dotted, where)
        raise UserError(
            f"unknown config key {dotted} ({why}): {hint or 'check the spelling —'} {fields}"
        )
    named = []
    for dotted, where in found:
        hint = _describe(dotted, where)[0]
        named.append(f"{dotted} ({hint})" if hint else dotted)
    raise UserError(f"unknown config keys {', '.join(named)} ({why}): check the spelling")


T = typing.TypeVar("T")


def to_schema(cfg: DictConfig, schema: type[T]) -> T:
    """A composed config as validated `schema` dataclasses: unknown keys refused first (see the
    module docstring), then each `__post_init__`'s `ValueError` (it names the field) as a
    one-line `UserError`."""
    check_known_keys(cfg, schema)
    try:
        typed = OmegaConf.to_object(cfg)
    except ValueError as err:
        raise UserError(f"invalid config: {err}") from None
    assert isinstance(typed, schema)
    return typed
