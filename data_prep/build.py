"""`bert-prep`: corpus → token ids → train/validation documents → NSP pairs → Arrow shards.

Writes the prepared data directory of docs/ARCHITECTURE.md (`train/`, `validation/`,
`dataset_dict.json`, `tokenizer/`, `manifest.json`) into a temporary sibling and renames it into
place when complete; manifest.json also records the size and sha256 of every Arrow shard (`files`),
which `bert-pretrain` checks before training. A finished directory whose manifest records the same
config, tokenizer and inputs is reused; `force=true` rebuilds. With `num_slices` the work is split
across processes (SLURM array tasks): see data_prep/slices.py. Leftovers of a killed earlier run
beside the output are removed first (`files.clean_leftovers`). The request, tokenization and the
writing of the directory live in data_prep/prepared.py, shared with the sliced build.

Memory does not grow with the corpus: documents stream through the tokenizer into a token store
on disk (data_prep/token_store.py, inside the temporary output directory) and are paired and
written a pool at a time (data_prep/prepared.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from data_prep.config import CONF_DIR, PrepAppConfig, to_object
from data_prep.files import atomic_directory, clean_leftovers
from data_prep.prepared import (
    WORK_DIR,
    Request,
    check_pairable,
    print_summary,
    tokenize_corpus,
    write_prepared,
)
from data_prep.slices import build_slice, merge_slices
from pretrain.errors import exit_on_user_error


def build(cfg: PrepAppConfig | DictConfig) -> Path:
    """Build (or reuse) the prepared data directory described by `cfg`; return its path.

    With `num_slices`, tokenize one slice (`slice_index`) or merge the finished slices instead
    (data_prep/slices.py); a merge returns the same directory a build without slices does."""
    cfg = to_object(cfg, PrepAppConfig)
    clean_leftovers(cfg.output_dir)
    if cfg.num_slices is not None:
        return build_slice(cfg) if cfg.slice_index is not None else merge_slices(cfg)
    req = Request.open(cfg)
    if req.finished():
        return Path(cfg.output_dir)
    return _build(req)


def _build(req: Request) -> Path:
    from data_prep.token_store import TokenStore

    cfg = req.cfg
    out = Path(cfg.output_dir)
    with atomic_directory(out) as tmp:
        part = tmp / WORK_DIR / "tokens"
        counts = tokenize_corpus(req, part)
        check_pairable(cfg, counts.num_documents, counts.num_multi_sentence)
        tokenize_s = time.perf_counter() - req.start
        stats = write_prepared(req, TokenStore([part]), counts.sources, tmp)
    seconds = time.perf_counter() - req.start
    timing = f"read + tokenize {tokenize_s:.1f} s, pairs + write {seconds - tokenize_s:.1f} s"
    print_summary(out, counts.num_bytes, stats, seconds, timing)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prep")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    build(cfg)


if __name__ == "__main__":
    main()
