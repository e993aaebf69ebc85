"""Fixtures shared across test packages: a small prepared dataset of real English (no network), and
a tiny model and labelled task to fine-tune."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_prep.build import build
from data_prep.config import compose
from data_prep.tokenizer import train_tokenizer
from tests.data_prep.dp_helpers import stdlib_documents, write_txt
from tests.finetune_rows import export_tiny_model, keyword_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prepared_english(tmp_path_factory) -> Path:
    """Tokenizer (vocab 1000) and NSP pairs (seq 64) built from Python's stdlib docstrings."""
    work = tmp_path_factory.mktemp("english_work")
    corpus = write_txt(work / "corpus" / "docs.txt", stdlib_documents())
    common = [f"work_dir={work}", "corpus=files", "corpus.name=english", f"corpus.paths=[{corpus}]"]
    train_tokenizer(compose("tokenizer", [*common, "vocab_size=1000"]))
    return build(compose("prep", [*common, "max_seq_length=64", "dupe_factor=2", "num_proc=1"]))


@pytest.fixture
def app_env() -> dict[str, str]:
    """Environment for running the command-line apps in a subprocess from any directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    return env


@pytest.fixture(scope="session")
def pretrained_run(prepared_english, tmp_path_factory) -> Path:
    """A finished (4-step) `bert-pretrain` run directory on `prepared_english`."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("pretrained_run")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={work}",
           f"data.dir={prepared_english}", "name=tiny", "trainer.max_steps=4",
           "trainer.val_check_interval=4"]  # fmt: skip
    subprocess.run(cmd, env=env, cwd=work, check=True, capture_output=True, timeout=300)
    return work / "runs" / "tiny"


@pytest.fixture(scope="session")
def tiny_model(prepared_english, tmp_path_factory) -> Path:
    """A freshly initialized bert-tiny with `prepared_english`'s 1000-token tokenizer, exported."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    return export_tiny_model(prepared_english / "tokenizer", out)


@pytest.fixture(scope="session")
def sequence_files(prepared_english, tmp_path_factory) -> list[str]:
    """`task.train=... task.dev=... task.test=...` of the keyword sequence task (csv)."""
    root = tmp_path_factory.mktemp("seq")
    return keyword_task(prepared_english / "tokenizer", root, tokens=False)


@pytest.fixture(scope="session")
def token_files(prepared_english, tmp_path_factory) -> list[str]:
    """`task.train=... task.dev=... task.test=...` of the keyword entity task (jsonl)."""
    root = tmp_path_factory.mktemp("tok")
    return keyword_task(prepared_english / "tokenizer", root, tokens=True)
