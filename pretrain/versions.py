"""The Lightning and DeepSpeed versions `bert-pretrain` is tested with, checked once at start.

`pretrain/strategy.py` and `pretrain/module.py` (gradient clipping) override internals of both
libraries, which change between minor versions without notice; a version outside the tested range
may then train wrongly rather than fail. `check_versions` (called by `bert-pretrain` before it
trains) stops such a launch with one line, unless BERT_PRETRAIN_ALLOW_UNTESTED_VERSIONS=1 is set in
the environment to proceed anyway (with a warning).
pyproject.toml states the same ranges (tests/test_packaging.py keeps them equal).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from pretrain.errors import UserError

# distribution -> tested range, as in pyproject.toml's dependencies (upper bound: the next minor).
TESTED = {"lightning": ">=2.4,<2.7", "deepspeed": ">=0.15,<0.20"}
ALLOW_ENV = "BERT_PRETRAIN_ALLOW_UNTESTED_VERSIONS"


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None  # not installed: the code that needs it fails on import, by name


def untested(installed: dict[str, str | None] | None = None) -> list[str]:
    """The names of the installed libraries outside their TESTED range; `installed` (name ->
    version, None: not installed) replaces what is installed, for tests."""
    found = installed if installed is not None else {n: _installed(n) for n in TESTED}
    outside = []
    for name, spec in TESTED.items():
        version = found.get(name)
        if version is None:
            continue
        try:
            ok = SpecifierSet(spec).contains(Version(version), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            outside.append(name)
    return outside


def check_versions(installed: dict[str, str | None] | None = None) -> None:
    """Raise a one-line `UserError` naming each library outside its tested range, or only warn on
    stderr when ALLOW_ENV is set (to anything but 0)."""
    found = installed if installed is not None else {n: _installed(n) for n in TESTED}
    outside = untested(found)
    if not outside:
        return
    named = " and ".join(f"{name} {found[name]}" for name in outside)
    verb = "is" if len(outside) == 1 else "are"
    message = (
        f"{named} {verb} outside the versions bert-pretrain is tested with "
        f"({', '.join(name + TESTED[name] for name in TESTED)}), whose internals "
        "pretrain/strategy.py and pretrain/module.py override"
    )
    if os.environ.get(ALLOW_ENV, "") not in ("", "0"):
        print(f"warning: {message}; proceeding because {ALLOW_ENV} is set", file=sys.stderr)
        return
    wanted = " ".join(f"'{name}{TESTED[name]}'" for name in outside)
    raise UserError(
        f"{message}: install a tested version (pip install {wanted}) or set {ALLOW_ENV}=1 to "
        "proceed anyway"
    )
