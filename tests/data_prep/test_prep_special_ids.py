"""Vocabularies with the special tokens at other ids, as Google's / Hugging Face's BERT vocabularies
have them ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103): bert-prep reads the ids from the
tokenizer and records them in manifest.json, and pretraining uses the manifest's ids."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from dp_helpers import REPO

from data_prep.build import build
from data_prep.config import compose
from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer_dir
from pretrain.errors import UserError

GOOGLE_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def google_style_vocab(ours: Path) -> list[str]:
    """Our tokenizer's vocabulary laid out as bert-base-uncased's: [PAD], 99 unused tokens, [UNK],
    [CLS], [SEP], [MASK], then the same word pieces."""
    words = (ours / "vocab.txt").read_text(encoding="utf-8").splitlines()[len(SPECIAL_TOKENS) :]
    unused = [f"[unused{i}]" for i in range(99)]
    return ["[PAD]", *unused, "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]


def hf_tokenizer_dir(out: Path, vocab: list[str]) -> Path:
    """A tokenizer directory as a Hugging Face BERT model has it (tokenizer.json, vocab.txt,
    tokenizer_config.json), made from `vocab` by tokenizers' BertWordPieceTokenizer."""
    from tokenizers import BertWordPieceTokenizer

    out.mkdir(parents=True)
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")
    tok = BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def prep(work: Path, corpus: Path, tokenizer: Path, name: str) -> Path:
    return build(compose("prep", [
        f"work_dir={work}", "corpus=files", "corpus.name=english", f"corpus.paths=[{corpus}]",
        f"tokenizer_dir={tokenizer}", "max_seq_length=64", "dupe_factor=1", "num_proc=1",
        f"output_dir={work}/{name}"]))  # fmt: skip


@pytest.fixture(scope="module")
def google_tokenizer(tmp_path_factory, english_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("google") / "tokenizer"
    return hf_tokenizer_dir(out, google_style_vocab(english_tokenizer))


@pytest.fixture(scope="module")
def both(tmp_path_factory, english_corpus, english_tokenizer, google_tokenizer):
    """The same corpus prepared with our tokenizer and with its Google-style renumbering."""
    work = tmp_path_factory.mktemp("both")
    return (
        prep(work, english_corpus, english_tokenizer, "ours"),
        prep(work, english_corpus, google_tokenizer, "google"),
    )


def test_manifest_records_the_tokenizers_ids_and_pairs_use_them(both, english_tokenizer):
    ours, google = both
    manifest = json.loads((google / "manifest.json").read_text())
    assert manifest["special_token_ids"] == GOOGLE_IDS
    # Same word pieces, other ids: the pairs are ours with every id renumbered.
    renumber = {i: 104 + i - 5 for i in range(5, 10_000)}
    renumber |= {0: 0, 1: 100, 2: 101, 3: 102, 4: 103}
    a, b = datasets.load_from_disk(str(ours)), datasets.load_from_disk(str(google))
    for split in ("train", "validation"):
        assert len(a[split]) == len(b[split]) > 0
        rows_a, rows_b = a[split]["input_ids"], b[split]["input_ids"]
        assert [[renumber[i] for i in row] for row in rows_a] == rows_b
        assert a[split]["next_sentence_label"] == b[split]["next_sentence_label"]
        assert all(row[0] == 101 and row[-1] == 102 and row.count(102) == 2 for row in rows_b)


def test_masking_uses_the_manifests_ids(both):
    from pretrain.data import LoaderSettings, PairDataset, PretrainDataModule
    from pretrain.masking import MaskingConfig

    google = both[1]
    manifest = json.loads((google / "manifest.json").read_text())
    loader = LoaderSettings(global_batch_size=64, micro_batch_size=64, val_batch_size=64,
                            num_workers=0, seed=1)  # fmt: skip
    module = PretrainDataModule(google, google / "tokenizer", manifest, MaskingConfig(), loader)
    rows = PairDataset(google / "train").__getitems__([(0, i) for i in range(64)])
    batch = module.collator(rows)
    original = np.full(batch["input_ids"].shape, 0)
    for i, row in enumerate(rows):
        original[i, : len(row["input_ids"])] = row["input_ids"]
    chosen = batch["labels"].numpy() != -100
    assert chosen.sum() > 50
    assert not np.isin(original[chosen], [0, 100, 101, 102, 103]).any()  # specials never chosen
    masked = batch["input_ids"].numpy()
    assert (masked[chosen] == 103).mean() > 0.6  # ~80% become [MASK] (id 103, not 4)
    assert (masked[~chosen] == original[~chosen]).all()  # padding stays [PAD] = 0


def test_vocabularies_bert_cannot_use_are_refused(tmp_path, english_tokenizer):
    vocab = google_style_vocab(english_tokenizer)
    no_mask = hf_tokenizer_dir(tmp_path / "no_mask", [t for t in vocab if t != "[MASK]"])
    with pytest.raises(UserError, match=r"no_mask: the vocabulary has no \[MASK\]"):
        load_tokenizer_dir(no_mask)
    pad_last = hf_tokenizer_dir(tmp_path / "pad_last", [*vocab[1:], "[PAD]"])
    with pytest.raises(UserError, match=r"\[PAD\] has id \d+, but the model pads with id 0"):
        load_tokenizer_dir(pad_last)


@pytest.mark.e2e
def test_continued_pretraining_from_a_hf_model_with_google_ids(
    both, google_tokenizer, tmp_path, app_env
):
    """`bert-pretrain init_from=<HF dir>` on data prepared with that model's tokenizer."""
    import transformers

    google = both[1]
    vocab_size = len((google_tokenizer / "vocab.txt").read_text().splitlines())
    hf = tmp_path / "hf-model"
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=512)  # fmt: skip
    transformers.BertForPreTraining(config).save_pretrained(hf)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(google_tokenizer / name, hf / name)
    cmd = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={tmp_path}",
           f"data.dir={google}", f"init_from={hf}", "name=cont", "trainer.max_steps=2",
           "trainer.val_check_interval=2"]  # fmt: skip
    proc = subprocess.run(cmd, env=app_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized from" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "runs" / "cont" / "summary.json").read_text())
    assert summary["step"] == 2 and np.isfinite(summary["val/mlm_loss"])
