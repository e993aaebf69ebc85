"""Where every Hydra app of the project (`bert-tokenizer`, `bert-prep`, `bert-pretrain`,
`bert-finetune`, `bert-export`) finds its YAML configs: `pretrain/conf/` inside an installed wheel
(pyproject.toml ships the repository's `conf/` there as package data), else the repository's
`conf/` (a source checkout: editable install, or `PYTHONPATH` pointing at it). Configs of your own
elsewhere are added with Hydra's `--config-dir DIR` (searched after these; README)."""

from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"  # the wheel's copy
_CHECKOUT = Path(__file__).resolve().parents[1] / "conf"  # conf/ beside pretrain/ in the repository

# The wheel's copy first: in site-packages, parents[1] is site-packages itself, where another
# distribution may have put a top-level `conf/`.
CONF_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _CHECKOUT)
