"""Sliced bert-prep (num_slices / slice_index, as slurm/prep.sbatch runs it): the merged directory
equals a single-process build; slices are atomic, reused, and checked by the merge."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from dp_helpers import assert_same_prepared, write_txt

from data_prep.build import build
from data_prep.config import PrepAppConfig, compose, to_object
from data_prep.slices import slice_dir, slice_documents
from pretrain.errors import UserError


def overrides(work: Path, corpus: Path, tokenizer: Path, *extra: str) -> list[str]:
    return [f"work_dir={work}", "corpus=files", "corpus.name=english",
            f"corpus.paths=[{corpus}]", f"tokenizer_dir={tokenizer}", "max_seq_length=64",
            "dupe_factor=2", "validation_fraction=0.1", "num_proc=1", *extra]  # fmt: skip


def sliced(work, corpus, tokenizer, num_slices: int, *extra: str) -> Path:
    """Every slice, then the merge, each a separate `build` call as separate array tasks make."""
    args = overrides(work, corpus, tokenizer, f"num_slices={num_slices}", *extra)
    for k in range(num_slices):
        build(compose("prep", [*args, f"slice_index={k}"]))
    return build(compose("prep", args))


@pytest.fixture(scope="module")
def single(tmp_path_factory, english_corpus, english_tokenizer) -> Path:
    work = tmp_path_factory.mktemp("single")
    return build(compose("prep", overrides(work, english_corpus, english_tokenizer)))


def test_slices_cover_every_document_once():
    for n, parts in ((10, 3), (2, 5), (7, 7), (1000, 16)):
        slices = [slice_documents(n, parts, k) for k in range(parts)]
        assert sorted(itertools.chain(*slices)) == list(range(n))
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_merged_slices_equal_a_single_build(single, tmp_path, english_corpus, english_tokenizer):
    out = sliced(tmp_path, english_corpus, english_tokenizer, 3, "num_proc=2")
    assert out.name == single.name
    assert_same_prepared(single, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["num_slices"] == 3
    assert not Path(f"{out}.slices").exists()  # the merge removes the slices
    # A slice task after the merge (a requeued one) finds the output finished and writes nothing.
    args = overrides(tmp_path, english_corpus, english_tokenizer, "num_slices=3")
    assert build(compose("prep", [*args, "slice_index=1"])) == out
    assert not Path(f"{out}.slices").exists()


def test_merged_slices_equal_a_single_build_in_pools(tmp_path, english_corpus, english_tokenizer):
    """Pools draw documents from every slice's part; the merge still equals a single build."""
    pools = "pool_tokens=6000"
    one = build(
        compose("prep", overrides(tmp_path / "one", english_corpus, english_tokenizer, pools))
    )
    many = sliced(tmp_path / "many", english_corpus, english_tokenizer, 4, pools, "num_proc=2")
    assert json.loads((one / "manifest.json").read_text())["splits"]["train"]["num_pools"] > 1
    assert_same_prepared(one, many)


def test_more_slices_than_documents(tmp_path, english_docs, english_tokenizer):
    corpus = write_txt(tmp_path / "three.txt", english_docs[:3])
    one = build(compose("prep", overrides(tmp_path / "one", corpus, english_tokenizer)))
    many = sliced(tmp_path / "many", corpus, english_tokenizer, 5)
    assert_same_prepared(one, many)


def test_merge_names_missing_slices_and_reuses_finished_ones(
    tmp_path, english_corpus, english_tokenizer, capsys
):
    args = overrides(tmp_path, english_corpus, english_tokenizer, "num_slices=4")
    for k in (0, 2):
        build(compose("prep", [*args, f"slice_index={k}"]))
    with pytest.raises(UserError, match=r"2 of 4 slices are missing.*slice_index 1,3"):
        build(compose("prep", args))
    cfg = compose("prep", [*args, "slice_index=2"])
    folder = slice_dir(to_object(cfg, PrepAppConfig), 2)
    stamp = (folder / "tokens.bin").stat().st_mtime_ns
    capsys.readouterr()
    build(cfg)  # run again (a requeued task): reused, not rewritten
    assert "reusing slice" in capsys.readouterr().out
    assert (folder / "tokens.bin").stat().st_mtime_ns == stamp
    # A slice of another config is not used by the merge.
    build(compose("prep", [*args, "slice_index=1"]))
    build(compose("prep", [*args, "slice_index=3", "short_seq_prob=0.5"]))
    with pytest.raises(UserError, match=r"1 of 4 slices .*another config.*slice_index 3"):
        build(compose("prep", args))


def test_slice_index_needs_num_slices_in_range():
    with pytest.raises(Exception, match=r"slice_index=1 needs num_slices"):
        compose_obj(["slice_index=1"])
    with pytest.raises(Exception, match=r"slice_index must be in \[0, num_slices=2\)"):
        compose_obj(["num_slices=2", "slice_index=2"])


def compose_obj(extra: list[str]):
    return to_object(compose("prep", ["tokenizer_dir=t", "output_dir=o", *extra]), PrepAppConfig)


def test_prep_modules_import_without_a_cycle():
    """bert-prep's modules import each other one way only (the shared code is data_prep/prepared.py),
    including imports inside functions."""
    import ast

    root = Path(__file__).resolve().parents[2] / "data_prep"
    graph = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {
            node.module.split(".")[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("data_prep.")
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "data_prep"
            for alias in node.names
        }

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                return [*path[path.index(dep) :], dep]
            found = cycle_from(dep, [*path, dep])
            if found:
                return found
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m, [m]))]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"
    assert {"prepared", "slices"} <= graph["build"] and "prepared" in graph["slices"]
    assert not graph["prepared"] & {"build", "slices"}
