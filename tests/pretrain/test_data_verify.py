"""bert-pretrain's check of a prepared directory before training (`data.verify`): damaged shards,
token ids past the vocabulary and unreadable shards fail at start with one line naming the shard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from data_prep.files import sha256_file
from pretrain.data import LoaderSettings, PairDataset, PretrainDataModule
from pretrain.data_verify import verify_prepared
from pretrain.errors import UserError
from pretrain.masking import MaskingConfig

SHARD = "train/data-00000-of-00001.arrow"


@pytest.fixture
def data(prepared_english, tmp_path) -> Path:
    """A copy of `prepared_english` to damage."""
    return Path(shutil.copytree(prepared_english, tmp_path / "data"))


def manifest(data: Path) -> dict:
    return json.loads((data / "manifest.json").read_text())


def verify(data: Path) -> None:
    m = manifest(data)
    verify_prepared(data, m, m["tokenizer"]["vocab_size"])


def datamodule(data: Path, verify: bool = True) -> PretrainDataModule:
    return PretrainDataModule(
        data,
        data / "tokenizer",
        manifest(data),
        MaskingConfig(),
        LoaderSettings(8, 4, 8, 0, seed=0),
        verify=verify,
    )


def flip_bytes(path: Path) -> None:
    """Garble 16 bytes in the middle of the file, keeping its size."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_intact_directory_passes(data, capsys):
    verify(data)
    assert capsys.readouterr().out == ""
    dm = datamodule(data)
    dm.setup("fit")
    assert len(dm.train_set) > 0


def test_flipped_bytes_fail_the_checksum(data):
    flip_bytes(data / SHARD)
    with pytest.raises(UserError) as err:
        verify(data)
    message = str(err.value)
    assert str(data / SHARD) in message and "sha256 mismatch against manifest.json" in message
    assert f"bert-prep force=true (output_dir={data})" in message and "\n" not in message


def test_truncated_shard_is_named(data):
    truncate(data / SHARD)
    with pytest.raises(UserError, match="truncated") as err:
        verify(data)
    assert str(data / SHARD) in str(err.value)


def test_truncated_shard_is_named_without_verification(data):
    truncate(data / SHARD)
    with pytest.raises(UserError, match="cannot be read") as err:
        PairDataset(data / "train")
    assert str(data / SHARD) in str(err.value) and "force=true" in str(err.value)


def test_token_id_past_the_vocabulary_is_named(data):
    """A shard with matching checksums (rewritten, manifest updated) whose ids do not fit the
    vocabulary: only the range check can catch it."""
    path = data / SHARD
    vocab = manifest(data)["tokenizer"]["vocab_size"]
    table = pa.ipc.open_stream(path.read_bytes()).read_all()  # not mapped: rewritten below
    column = table.column("input_ids").combine_chunks()
    values = column.values.to_numpy().copy()
    values[len(values) // 2] = vocab + 7
    fixed = pa.ListArray.from_arrays(column.offsets, pa.array(values, type=pa.int32()))
    table = table.set_column(0, table.schema.field(0), fixed)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    m = manifest(data)
    m["files"][SHARD] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (data / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError) as err:
        verify(data)
    message = str(err.value)
    assert str(path) in message and f"input_ids holds {vocab + 7}" in message
    assert f"vocab_size={vocab}" in message


def test_verify_false_skips_the_check(data):
    m = manifest(data)
    m["files"][SHARD]["sha256"] = "0" * 64  # the shard itself is intact
    (data / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="sha256 mismatch"):
        datamodule(data).setup("fit")
    dm = datamodule(data, verify=False)
    dm.setup("fit")
    assert len(dm.train_set) > 0


def test_manifest_without_checksums_loads_with_a_notice(data, capsys):
    m = manifest(data)
    del m["files"]  # as bert-prep wrote it before recording checksums
    (data / "manifest.json").write_text(json.dumps(m))
    dm = datamodule(data)
    dm.setup("fit")
    assert len(dm.train_set) > 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"warning: {data} cannot be verified")
    assert "re-run bert-prep force=true" in line


def test_bert_pretrain_stops_at_start_naming_the_shard(data, tmp_path, app_env):
    flip_bytes(data / SHARD)
    cmd = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"data.dir={data}",
           f"work_dir={tmp_path / 'work'}", "trainer.max_steps=2"]  # fmt: skip
    result = subprocess.run(
        cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: data shard {data / SHARD} is corrupt" in result.stderr
    assert "Traceback" not in result.stderr
