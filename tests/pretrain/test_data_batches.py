"""`PairDataset` reads micro-batches straight from the Arrow columns; the data module's batches are
those of reading the rows through `datasets` and masking them with the frozen per-row collator
(tests/pretrain/reference_masking.py), on a split built here (several shards of several chunks)
and on the demo data where it was prepared."""

from __future__ import annotations

import json
import pickle
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.data import LoaderSettings, PairDataset, PretrainDataModule, TrainStreamSampler
from pretrain.masking import MaskingConfig, PairBatch
from tests.conftest import REPO
from tests.pretrain import reference_masking as reference

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(60))]
VOCAB += [f"##c{i}" for i in range(40)]  # ids 65..104: continuation tokens


def write_split(path: Path, n: int, seed: int) -> None:
    """`n` NSP pairs of 3 to 40 tokens in two shards; `save_to_disk` cuts each shard into record
    batches of 1000 rows, so the split has four chunks."""
    import datasets

    rng = np.random.default_rng(seed)
    ids, types = [], []
    for _ in range(n):
        a = rng.integers(5, len(VOCAB), int(rng.integers(0, 20))).tolist()
        b = rng.integers(5, len(VOCAB), int(rng.integers(0, 18))).tolist()
        ids.append([2, *a, 3, *b, 3])
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "token_type_ids": datasets.Sequence(datasets.Value("int8")),
            "next_sentence_label": datasets.Value("int8"),
        }
    )
    columns = {
        "input_ids": ids,
        "token_type_ids": types,
        "next_sentence_label": rng.integers(0, 2, n).tolist(),
    }
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(path), num_shards=2)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared directory as bert-pretrain reads it: splits, tokenizer vocabulary, manifest."""
    root = tmp_path_factory.mktemp("pairs")
    write_split(root / "train", 2300, seed=0)
    write_split(root / "validation", 90, seed=1)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    ids = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    manifest = {"max_seq_length": 40, "special_token_ids": ids}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def rows_via_datasets(split: Path, keys: list[tuple[int, int]]) -> list[dict]:
    """The rows of `keys` read the way the per-row loader read them (lists from `datasets`)."""
    import datasets

    table = datasets.load_from_disk(str(split))
    cols = table[[index for _, index in keys]]
    return [
        {
            "input_ids": cols["input_ids"][i],
            "token_type_ids": cols["token_type_ids"][i],
            "next_sentence_label": cols["next_sentence_label"][i],
            "epoch": epoch,
            "index": index,
        }
        for i, (epoch, index) in enumerate(keys)
    ]


def reference_collator(module: PretrainDataModule, masking: MaskingConfig, seed: int):
    vocab = VOCAB if masking.whole_word_masking else None
    continuation = None if vocab is None else reference.continuation_ids_from_vocab(vocab)
    cfg = reference.MaskingConfig(**vars(masking))
    return reference.MaskingCollator(cfg, vocab_size=module.vocab_size, pad_id=0, mask_id=4,
                                     special_ids=[0, 2, 3, 4], seed=seed,
                                     continuation_ids=continuation)  # fmt: skip


def assert_same_batch(batch: dict, expected: dict) -> None:
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key


def test_rows_are_those_datasets_reads(prepared):
    data = PairDataset(prepared / "train")
    assert data.rows.data.table.column("input_ids").num_chunks == 4  # the layout under test
    rng = np.random.default_rng(2)
    # Rows from every chunk, repeated rows, the first and the last, any epochs.
    indices = [0, 999, 1000, 1149, 1150, 2299, 7, 7, *rng.integers(0, 2300, 40).tolist()]
    keys = [(int(rng.integers(0, 5)), i) for i in indices]
    packed = data.__getitems__(keys)
    assert isinstance(packed, PairBatch)
    for row, expected in zip(packed, rows_via_datasets(prepared / "train", keys), strict=True):
        assert row["input_ids"].tolist() == expected["input_ids"]
        assert row["token_type_ids"].tolist() == expected["token_type_ids"]
        for key in ("next_sentence_label", "epoch", "index"):
            assert row[key] == expected[key]
    assert (
        data[(3, 1150)]["input_ids"].tolist()
        == rows_via_datasets(prepared / "train", [(3, 1150)])[0]["input_ids"]
    )
    with pytest.raises(IndexError):
        data.__getitems__([(0, 2300)])


def test_a_pickled_dataset_reads_the_same_rows(prepared):
    # The form a loader worker gets under the spawn start method: the NumPy views are not
    # pickled (that would copy the split), the copy builds its own.
    data = PairDataset(prepared / "train")
    keys = [(0, i) for i in (5, 1500, 2000)]
    before = data.__getitems__(keys)
    copy = pickle.loads(pickle.dumps(data))
    assert copy._columns is None
    after = copy.__getitems__(keys)
    np.testing.assert_array_equal(after.input_ids, before.input_ids)
    np.testing.assert_array_equal(after.lengths, before.lengths)


@pytest.mark.parametrize(
    ("masking", "workers"),
    [
        (MaskingConfig(), 0),
        (MaskingConfig(whole_word_masking=True, mlm_probability=0.3), 0),
        (MaskingConfig(), 1),  # batches handed over from a worker process
    ],
    ids=["default", "whole-word", "default-1-worker"],
)
def test_loader_batches_match_the_reference(prepared, masking: MaskingConfig, workers: int):
    manifest = json.loads((prepared / "manifest.json").read_text())
    loader = LoaderSettings(global_batch_size=32, micro_batch_size=16, val_batch_size=50,
                            num_workers=workers, seed=11)  # fmt: skip
    module = PretrainDataModule(prepared, prepared / "tokenizer", manifest, masking, loader,
                                verify=False)  # fmt: skip
    module.setup("fit")
    expected_collator = reference_collator(module, masking, seed=11)

    keys = list(islice(iter(TrainStreamSampler(2300, 32, 0, 1, seed=11)), 16 * 6))
    for step, batch in enumerate(islice(iter(module.train_dataloader()), 6)):
        rows = rows_via_datasets(prepared / "train", keys[step * 16 : (step + 1) * 16])
        assert_same_batch(batch, expected_collator(rows))

    val_keys = [(0, i) for i in range(90)]
    val_batches = list(module.val_dataloader())
    for batch, start in zip(val_batches, (0, 50), strict=True):
        rows = rows_via_datasets(prepared / "validation", val_keys[start : start + 50])
        assert_same_batch(batch, expected_collator(rows))


DEMO = [REPO / "work" / "data" / f"demo-seq{n}" for n in (128, 512)]


@pytest.mark.parametrize("data_dir", DEMO, ids=lambda p: p.name)
def test_demo_data_batches_match_the_reference(data_dir: Path):
    if not (data_dir / "manifest.json").is_file():
        pytest.skip(f"{data_dir} is not prepared (make prep)")
    manifest = json.loads((data_dir / "manifest.json").read_text())
    masking = MaskingConfig(max_predictions_per_seq=20)
    loader = LoaderSettings(global_batch_size=64, micro_batch_size=64, val_batch_size=64,
                            num_workers=0, seed=5)  # fmt: skip
    module = PretrainDataModule(data_dir, data_dir / "tokenizer", manifest, masking, loader,
                                verify=False)  # fmt: skip
    module.setup("fit")
    ids = manifest["special_token_ids"]
    expected_collator = reference.MaskingCollator(
        reference.MaskingConfig(max_predictions_per_seq=20),
        vocab_size=module.vocab_size,
        pad_id=ids["pad"],
        mask_id=ids["mask"],
        special_ids=[ids["pad"], ids["cls"], ids["sep"], ids["mask"]],
        seed=5,
    )
    n = len(module.train_set)
    keys = list(islice(iter(TrainStreamSampler(n, 64, 0, 1, seed=5)), 64 * 2))
    for step, batch in enumerate(islice(iter(module.train_dataloader()), 2)):
        rows = rows_via_datasets(data_dir / "train", keys[step * 64 : (step + 1) * 64])
        assert_same_batch(batch, expected_collator(rows))
    # Later in the stream (past the first epoch of the seq-512 data), read directly.
    late = list(islice(iter(TrainStreamSampler(n, 64, 0, 1, seed=5, start_step=1000)), 64))
    batch = module.collator(module.train_set.__getitems__(late))
    assert_same_batch(batch, expected_collator(rows_via_datasets(data_dir / "train", late)))
