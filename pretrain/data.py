"""Pretraining data: a step-indexed sample stream over the prepared pairs, and the DataModule.

Training reads one endless stream: epoch e is a permutation of the split seeded by (seed, e), and
the epochs follow each other. Optimizer step k consumes stream positions [k·G, (k+1)·G) for the
global batch size G, whatever the number of processes: process r of W takes the r-th contiguous
1/W of it. So the samples of a step do not depend on the world size, and resuming at step k needs
nothing but k (read from the restored trainer) to continue with the next unseen sample. Each item
carries its (epoch, index) key so the collator derives masks from it, not from worker state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.data_verify import read_shard, rebuild_hint, verify_prepared
from pretrain.errors import UserError
from pretrain.masking import (
    MaskingCollator,
    MaskingConfig,
    PairBatch,
    continuation_ids_from_vocab,
)
from pretrain.tokenizer_check import read_vocab

COLUMNS = ("input_ids", "token_type_ids", "next_sentence_label")


# (epoch, index): which pass over the split, and which row of it. A plain tuple: it crosses into
# loader worker processes by pickling.
SampleKey = tuple[int, int]


class TrainStreamSampler(Sampler[SampleKey]):
    """Endless, resumable, rank-aware stream of sample keys (see the module docstring)."""

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        start_step: int = 0,
    ):
        if global_batch_size % world_size:
            raise ValueError(
                f"global batch {global_batch_size} not divisible by world size {world_size}"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_step = start_step

    @lru_cache(maxsize=2)  # noqa: B019 — a sampler lives as long as its loader; 2 epochs straddle a step
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[SampleKey]:
        per_rank = self.global_batch_size // self.world_size
        step = self.start_step
        while True:
            first = step * self.global_batch_size + self.rank * per_rank
            for position in range(first, first + per_rank):
                epoch, offset = divmod(position, self.num_samples)
                yield (epoch, int(self._permutation(epoch)[offset]))
            step += 1


class ValidationSampler(Sampler[SampleKey]):
    """The held-out split in order, one contiguous share per process, with fixed epoch-0 masks.
    (`trainer.limit_val_batches` shortens periodic validation; the sampler always covers it all.)"""

    def __init__(self, num_samples: int, rank: int, world_size: int):
        share = -(-num_samples // world_size)
        self.indices = range(rank * share, min((rank + 1) * share, num_samples))

    def __iter__(self) -> Iterator[SampleKey]:
        return ((0, i) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class PairDataset(Dataset):
    """Rows of a prepared split, fetched by `SampleKey`, with the key attached for the collator.

    A DataLoader fetches a micro-batch with one `__getitems__` call, which returns the rows
    packed end to end (`PairBatch`) straight from the Arrow columns: one NumPy gather of the list
    offsets, one slice per row of the (memory-mapped, not copied) values, no Python lists or
    per-row dicts.
    """

    def __init__(self, path: Path):
        import datasets
        import pyarrow as pa

        try:
            self.rows = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise UserError(
                f"{path} is missing or incomplete ({err}); re-run `bert-prep` with force=true"
            ) from None
        except (OSError, ValueError, pa.ArrowException) as err:  # a truncated or garbled shard
            # pyarrow's message names no file: find the shard that fails to read and name it.
            for shard in sorted(path.glob("*.arrow")):
                read_shard(shard, path.parent)
            raise UserError(
                f"{path} cannot be loaded ({type(err).__name__}: {err}); {rebuild_hint(path.parent)}"
            ) from None
        missing = [c for c in COLUMNS if c not in self.rows.column_names]
        if missing:
            raise UserError(
                f"{path} lacks columns {missing}; it was not written by this `bert-prep`"
            )
        self.rows = self.rows.select_columns(list(COLUMNS))
        # Built here, before loader workers fork from this process, so they share its pages.
        self._columns: _ArrowColumns | None = _ArrowColumns(self.rows)

    def __getstate__(self) -> dict:
        # The NumPy views point into this process's memory maps: a process that unpickles the
        # dataset (a worker started by spawn) rebuilds them on its first read; pickling them
        # would copy the whole split.
        return {**self.__dict__, "_columns": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: SampleKey) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[SampleKey]) -> PairBatch:
        if self._columns is None:
            self._columns = _ArrowColumns(self.rows)
        return self._columns.read(keys)


class _ArrowColumns:
    """A `datasets.Dataset`'s pair columns as NumPy, and the read of a micro-batch."""

    def __init__(self, rows) -> None:
        # Row i of the dataset is row i of its table: `load_from_disk` gives no indices mapping
        # (`save_to_disk` writes it out), and `select_columns` adds none.
        if getattr(rows, "_indices", None) is not None:
            raise ValueError("PairDataset reads a dataset without an indices mapping")
        table = rows.data.table  # the pyarrow.Table, memory-mapped for a dataset on disk
        self.num_rows = len(table)
        self.ids = _ListColumn(table.column("input_ids"))
        self.types = _ListColumn(table.column("token_type_ids"), like=self.ids)
        self.labels = table.column("next_sentence_label").to_numpy()  # (N,), a copy of 1 B a row

    def read(self, keys: list[SampleKey]) -> PairBatch:
        keyed = np.array(keys, dtype=np.uint64).reshape(-1, 2)  # (B, 2): epoch, index
        if keyed.size and int(keyed[:, 1].max()) >= self.num_rows:
            raise IndexError(f"row {int(keyed[:, 1].max())} of a split of {self.num_rows} rows")
        rows = keyed[:, 1].astype(np.int64)  # (B,)
        ids, lengths = self.ids.take(rows)
        types, type_lengths = self.types.take(rows)
        bad = np.flatnonzero(type_lengths != lengths)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"row {int(rows[i])}: token_type_ids has {int(type_lengths[i])} entries, "
                f"input_ids {int(lengths[i])}"
            )
        return PairBatch(
            input_ids=ids,
            token_type_ids=types,
            lengths=lengths,
            next_sentence_label=self.labels[rows].astype(np.int64),
            epoch=keyed[:, 0].copy(),
            index=keyed[:, 1].copy(),
        )


class _ListColumn:
    """A list column of a pyarrow.Table, chunk by chunk, read a batch of rows at a time.

    The values stay in Arrow's memory (a NumPy view of each chunk's, memory-mapped for a dataset
    on disk); the list offsets of all chunks are copied end to end (4 bytes a row), so finding the
    rows of a batch is one NumPy gather. `like`: a column whose offsets to share when equal (the
    two lists of a pair are written alike).
    """

    def __init__(self, column, like: _ListColumn | None = None) -> None:
        chunks = column.chunks
        # Chunk c holds rows [first_row[c], first_row[c + 1]); (C + 1,).
        self.first_row = np.cumsum([0, *(len(c) for c in chunks)])
        # Chunk c's offsets, one more than its rows, at [first_row[c] + c, first_row[c + 1] + c]
        # of the concatenation, (N + C,); they index that chunk's values (its rows end to end).
        offsets = [c.offsets.to_numpy() for c in chunks]
        self.offsets = np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int32)
        if like is not None and np.array_equal(self.offsets, like.offsets):
            self.offsets = like.offsets  # one copy for both
        self.values = [c.values.to_numpy(zero_copy_only=False) for c in chunks]  # views if no nulls

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows `rows` (B,) end to end, (N,), and their lengths, (B,) int64."""
        chunk = np.searchsorted(self.first_row, rows, side="right") - 1  # (B,)
        at = rows + chunk  # (B,): each row's first offset in the concatenation
        start, end = self.offsets[at], self.offsets[at + 1]  # (B,) each
        # One slice per row (the rows of a random batch lie in different chunks), with Python
        # ints: several times cheaper than slicing with NumPy scalars.
        parts = [
            self.values[c][a:b]
            for c, a, b in zip(chunk.tolist(), start.tolist(), end.tolist(), strict=True)
        ]
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return values, (end - start).astype(np.int64)


@dataclass
class LoaderSettings:
    global_batch_size: int
    micro_batch_size: int
    val_batch_size: int
    num_workers: int
    seed: int


class PretrainDataModule(L.LightningDataModule):
    """Train stream and held-out validation over a `bert-prep` directory."""

    def __init__(
        self,
        data_dir: Path,
        tokenizer_dir: Path,
        manifest: dict,
        masking: MaskingConfig,
        loader: LoaderSettings,
        val_mlm_probability: float | None = None,
        verify: bool = True,
    ):
        super().__init__()
        self.data_dir = data_dir
        self.manifest = manifest
        self.loader = loader
        self.verify = verify
        ids = manifest["special_token_ids"]
        vocab = read_vocab(tokenizer_dir)
        self.vocab_size = len(vocab)

        def collator(masking: MaskingConfig) -> MaskingCollator:
            return MaskingCollator(
                masking,
                vocab_size=len(vocab),
                pad_id=ids["pad"],
                mask_id=ids["mask"],
                special_ids=[ids["pad"], ids["cls"], ids["sep"], ids["mask"]],
                seed=loader.seed,
                continuation_ids=continuation_ids_from_vocab(vocab)
                if masking.whole_word_masking
                else None,
            )

        self.collator = collator(masking)
        self.val_collator = (
            self.collator
            if val_mlm_probability is None
            else collator(dataclasses.replace(masking, mlm_probability=val_mlm_probability))
        )
        self.train_set: PairDataset | None = None
        self.val_set: PairDataset | None = None

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            if self.verify:  # on every process, before anything reads the data
                verify_prepared(
                    self.data_dir, self.manifest, self.vocab_size, notify=self._rank_world()[0] == 0
                )
            self.train_set = PairDataset(self.data_dir / "train")
            self.val_set = PairDataset(self.data_dir / "validation")

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        # The trainer's step is restored before the loaders are built, so a resumed run starts at
        # the first sample it has not seen.
        start_step = self.trainer.global_step if self.trainer else 0
        sampler = TrainStreamSampler(
            len(self.train_set),
            self.loader.global_batch_size,
            rank,
            world,
            self.loader.seed,
            start_step,
        )
        return self._loader(self.train_set, sampler, self.loader.micro_batch_size)

    def val_dataloader(self) -> DataLoader:
        sampler = ValidationSampler(len(self.val_set), *self._rank_world())
        return self._loader(self.val_set, sampler, self.loader.val_batch_size, self.val_collator)

    def _loader(
        self,
        dataset: PairDataset,
        sampler: Sampler,
        batch_size: int,
        collator: MaskingCollator | None = None,
    ) -> DataLoader:
        workers = self.loader.num_workers
        # A private generator: creating an iterator draws a worker base seed, and drawing it from
        # the global RNG would shift dropout after a resume (the loaders are re-created there).
        generator = torch.Generator().manual_seed(self.loader.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collator or self.collator,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=generator,
        )
