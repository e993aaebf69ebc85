"""Where every Hydra app of the project (`bert-tokenizer`, `bert-prep`, `bert-pretrain`,
`bert-finetune`, `bert-export`) finds its YAML configs: the repository's `conf/`."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
