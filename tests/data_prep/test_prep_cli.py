"""The command-line apps through Hydra, in a subprocess: success, user errors, config errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def app(module: str, cwd, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"data_prep.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tokenizer_then_prep(tmp_path, english_corpus, app_env):
    corpus_args = ["corpus=files", "corpus.name=docs", f"corpus.paths=[{english_corpus}]"]
    tok = app("tokenizer", tmp_path, app_env, *corpus_args, "vocab_size=500")
    assert tok.returncode == 0, tok.stderr
    tok_dir = tmp_path / "work" / "tokenizers" / "docs"
    assert (tok_dir / "tokenizer.json").is_file()
    assert (tmp_path / "work" / "logs" / "tokenizer" / ".hydra" / "config.yaml").is_file()
    prep = app(
        "build",
        tmp_path,
        app_env,
        *corpus_args,
        "max_seq_length=32",
        "dupe_factor=1",
        "num_proc=2",
    )
    assert prep.returncode == 0, prep.stderr
    out = tmp_path / "work" / "data" / "docs-seq32"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["tokenizer"]["vocab_size"] == 500
        and manifest["tokenizer"]["source_dir"] == "work/tokenizers/docs"
    )
    assert "train" in prep.stdout and "pairs" in prep.stdout


def test_missing_corpus_path_exits_2_with_one_line(tmp_path, app_env):
    proc = app("tokenizer", tmp_path, app_env, "corpus=files", "corpus.paths=[missing/*.txt]")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: corpus path 'missing/*.txt' matches no file")
    assert "Traceback" not in proc.stderr


def test_unknown_key_gives_hydra_error(tmp_path, app_env):
    proc = app("build", tmp_path, app_env, "max_seq_len=128")
    assert proc.returncode == 1
    assert "max_seq_len" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "work" / "data").exists()


@pytest.mark.skipif(shutil.which("bert-tokenizer") is None, reason="package not installed")
def test_console_script(tmp_path, app_env):
    proc = subprocess.run(
        ["bert-tokenizer", "corpus=files", "corpus.paths=[nope.txt]"],
        cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "error: corpus path 'nope.txt' does not exist" in proc.stderr
