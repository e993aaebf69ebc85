"""bert-tokenizer's output: files, special ids, identical ids in `tokenizers` and `transformers`."""

from __future__ import annotations

import json

import pytest
from dp_helpers import tokenizer_overrides
from tokenizers import Tokenizer

from data_prep.config import compose
from data_prep.tokenizer import SPECIAL_TOKENS, load_tokenizer_dir, sample_lines, train_tokenizer
from pretrain.errors import UserError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo Wörld! Crème brûlée, naïve café, résumé — Ångström, Øresund, Ñandú.",
    "MIXED Case WORDS and CamelCaseIdentifiers like getHTTPResponseCode()",
    "東京は日本の首都です。中文测试：你好，世界！한국어 텍스트",
    "Punctuation!!! ??? ... --- (brackets) [square] {curly} <angle> \"quotes\" 'single' `back`",
    "Numbers 3.14159, 1,000,000 and 2024-01-01T12:00:00Z; e-mail a.b@c.org #hash $5 50% & more",
    "Unknown chars: 🤖 🎉 ∑∫√ ☃ \u200b zero-width and \x00 control \t tabs \n newlines",
    "supercalifragilisticexpialidocious" * 5,
    "",
    "   ",
]
PAIRS = [(TEXTS[0], TEXTS[1]), (TEXTS[3], TEXTS[4]), (TEXTS[6], "short"), ("x", TEXTS[5])]


def check_same_ids(path):
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast.from_pretrained(str(path))
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in TEXTS:
        enc = raw.encode(text)
        out = hf(text)
        assert out["input_ids"] == enc.ids, text
        assert out["token_type_ids"] == enc.type_ids, text
        assert hf.convert_ids_to_tokens(out["input_ids"]) == enc.tokens
    for a, b in PAIRS:
        enc = raw.encode(a, b)
        out = hf(a, b)
        assert out["input_ids"] == enc.ids, (a, b)
        assert out["token_type_ids"] == enc.type_ids, (a, b)
        assert enc.type_ids[0] == 0 and enc.type_ids[-1] == 1
    return raw


def test_directory_contents(english_tokenizer):
    files = {p.name for p in english_tokenizer.iterdir()}
    assert {
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= files
    vocab = (english_tokenizer / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == list(SPECIAL_TOKENS)
    raw = load_tokenizer_dir(english_tokenizer)
    assert len(vocab) == raw.get_vocab_size() == 800
    assert all(raw.token_to_id(tok) == i for i, tok in enumerate(vocab))
    assert any(tok.startswith("##") for tok in vocab)
    config = json.loads((english_tokenizer / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizerFast"
    assert config["do_lower_case"] is True and "strip_accents" in config
    assert config["strip_accents"] is None and config["model_max_length"] == 512
    special = json.loads((english_tokenizer / "special_tokens_map.json").read_text())
    assert special == {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    enc = raw.encode("hello", "world")
    assert enc.tokens[0] == "[CLS]" and enc.ids[0] == 2 and enc.tokens.count("[SEP]") == 2
    assert raw.decode(raw.encode("the parser returns values").ids) == "the parser returns values"


def test_uncased_same_ids_in_transformers(english_tokenizer):
    raw = check_same_ids(english_tokenizer)
    assert raw.encode("CAFÉ").tokens == raw.encode("cafe").tokens  # lowercased, accents stripped


@pytest.mark.parametrize(
    ("lowercase", "strip_accents"), [(False, None), (True, False), (False, True)]
)
def test_other_settings_same_ids_in_transformers(
    tmp_path, english_corpus, lowercase, strip_accents
):
    path = train_tokenizer(
        compose(
            "tokenizer",
            tokenizer_overrides(
                tmp_path,
                english_corpus,
                f"lowercase={str(lowercase).lower()}",
                f"strip_accents={'null' if strip_accents is None else str(strip_accents).lower()}",
                "vocab_size=300",
            ),
        )
    )
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is lowercase and config["strip_accents"] is strip_accents
    raw = check_same_ids(path)
    if not lowercase:
        assert raw.encode("The").tokens != raw.encode("the").tokens


def test_reuse_force_and_mismatch(tmp_path, english_corpus, capsys):
    overrides = tokenizer_overrides(tmp_path, english_corpus, "vocab_size=200")
    path = train_tokenizer(compose("tokenizer", overrides))
    stamp = (path / "tokenizer.json").stat().st_mtime_ns
    assert train_tokenizer(compose("tokenizer", overrides)) == path
    assert "reusing tokenizer" in capsys.readouterr().out
    assert (path / "tokenizer.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match=r"another config \(differs in: vocab_size\).*force=true"):
        train_tokenizer(compose("tokenizer", [*overrides, "vocab_size=250"]))
    path = train_tokenizer(compose("tokenizer", [*overrides, "vocab_size=250", "force=true"]))
    assert Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size() == 250
    assert sorted(p.name for p in path.parent.iterdir()) == ["english"]  # no temporary leftovers


def test_reuse_ignores_corpus_fields_of_other_kinds(tmp_path, english_corpus, capsys):
    """A tokenizer recorded before a corpus field of another kind existed (or with other values
    there) is reused: only the fields of its own kind (and caches never) decide."""
    overrides = tokenizer_overrides(tmp_path, english_corpus, "vocab_size=200")
    path = train_tokenizer(compose("tokenizer", overrides))
    args_file = path / "training_args.json"
    record = json.loads(args_file.read_text())
    for key in ("tasks", "split_seed", "labelled_dir", "pypi_cache_dir", "dataset"):
        record["corpus"].pop(key)  # as written by a version without these fields
    args_file.write_text(json.dumps(record))
    capsys.readouterr()
    assert train_tokenizer(compose("tokenizer", [*overrides, "corpus.split_seed=9"])) == path
    assert "reusing tokenizer" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"differs in: corpus.text_column"):
        train_tokenizer(compose("tokenizer", [*overrides, "corpus.text_column=body"]))


def test_max_training_lines_samples(tmp_path):
    lines = [f"line {i}" for i in range(100)]
    assert sample_lines(lines, 1000, seed=1) == lines
    sample = sample_lines(lines, 10, seed=1)
    assert len(sample) == 10 and sample == sorted(sample, key=lambda s: int(s.split()[1]))
    assert sample == sample_lines(lines, 10, seed=1) != sample_lines(lines, 10, seed=2)


def test_load_tokenizer_dir_errors(tmp_path):
    with pytest.raises(UserError, match=r"does not exist.*bert-tokenizer"):
        load_tokenizer_dir(tmp_path / "nope")
    with pytest.raises(UserError, match=r"has no tokenizer.json.*bert-tokenizer"):
        load_tokenizer_dir(tmp_path)


@pytest.mark.e2e
def test_training_is_byte_identical_across_processes(tmp_path, english_corpus, app_env):
    """The trainer numbers equal-rank tokens in hash-map order, which varies per process; the saved
    tokenizer must not (its hash identifies the data built with it)."""
    import subprocess
    import sys

    hashes = []
    for run in ("a", "b"):
        cmd = [sys.executable, "-m", "data_prep.tokenizer",
               *tokenizer_overrides(tmp_path / run, english_corpus)]  # fmt: skip
        subprocess.run(cmd, env=app_env, check=True, capture_output=True, timeout=120)
        out = tmp_path / run / "tokenizers" / "english" / "tokenizer.json"
        hashes.append(out.read_bytes())
    assert hashes[0] == hashes[1]
