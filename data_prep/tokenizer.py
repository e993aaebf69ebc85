"""`bert-tokenizer`: train a BERT WordPiece tokenizer on the corpus and save it as a directory.

The directory (see docs/ARCHITECTURE.md) holds `tokenizer.json`, `vocab.txt`,
`tokenizer_config.json`, `special_tokens_map.json` and `training_args.json` (the config it was
trained with, used to reuse it). `transformers.BertTokenizerFast.from_pretrained(dir)` gives the same
ids as `tokenizers.Tokenizer.from_file(dir/"tokenizer.json")`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from data_prep.config import CONF_DIR, TokenizerAppConfig, as_dict, corpus_identity, to_object
from data_prep.files import atomic_directory, clean_leftovers, read_json, write_json
from pretrain.errors import UserError, exit_on_user_error

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_TOKEN_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
"""The ids `bert-tokenizer` gives them; other vocabularies (Google's: [CLS]=101) may differ, see
`special_token_ids`."""
TRAINING_ARGS = "training_args.json"
FORMAT_VERSION = 1
# Config fields that do not change the trained tokenizer.
_NOT_RECORDED = ("work_dir", "output_dir", "force")
_CORPUS_NOT_RECORDED = ("cache_dir", "hf_cache_dir")


def new_tokenizer(lowercase: bool, strip_accents: bool | None) -> Tokenizer:
    """An untrained BERT WordPiece tokenizer with the standard pipeline."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def add_post_processor(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def sample_lines(lines: Iterable[str], cap: int, seed: int) -> list[str]:
    """All lines when there are at most `cap`, else a seeded uniform sample (reservoir), in order."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        if index < cap:
            reservoir.append((index, line))
        else:
            slot = rng.randint(0, index)
            if slot < cap:
                reservoir[slot] = (index, line)
    reservoir.sort(key=lambda item: item[0])
    return [line for _, line in reservoir]


def recorded_config(cfg: TokenizerAppConfig) -> dict[str, Any]:
    """The part of the config that determines the tokenizer, as stored in training_args.json."""
    data = as_dict(cfg)
    for key in _NOT_RECORDED:
        data.pop(key)
    for key in _CORPUS_NOT_RECORDED:
        data["corpus"].pop(key)
    return {"format_version": FORMAT_VERSION, **data}


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with only the corpus fields of its kind (`corpus_identity`)."""
    if isinstance(record.get("corpus"), dict):
        return {**record, "corpus": corpus_identity(record["corpus"])}
    return record


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in diff_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def train_tokenizer(cfg: TokenizerAppConfig | DictConfig) -> Path:
    """Train (or reuse) the tokenizer described by `cfg`; return its directory."""
    cfg = to_object(cfg, TokenizerAppConfig)
    out = Path(cfg.output_dir)
    record = recorded_config(cfg)
    clean_leftovers(out)
    if out.exists() and not cfg.force:
        args_file = out / TRAINING_ARGS
        if not args_file.is_file():
            raise UserError(
                f"{out} exists but is not a tokenizer written by bert-tokenizer (no {TRAINING_ARGS}); "
                "pass force=true to replace it or choose another output_dir"
            )
        differing = diff_keys(_comparable(read_json(args_file)), _comparable(record))
        if not differing:
            print(f"reusing tokenizer {out} (same config; force=true rebuilds)", flush=True)
            return out
        raise UserError(
            f"{out} holds a tokenizer trained with another config (differs in: "
            f"{', '.join(differing)}); pass force=true to retrain it or choose another output_dir"
        )

    from data_prep.corpus import read_corpus

    start = time.perf_counter()
    corpus = read_corpus(cfg.corpus)
    lines = sample_lines(
        (s for doc in corpus.documents for s in doc.sentences), cfg.max_training_lines, cfg.seed
    )
    read_s = time.perf_counter() - start
    tok = new_tokenizer(cfg.lowercase, cfg.strip_accents)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=cfg.limit_alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(_batches(lines), trainer=trainer, length=len(lines))
    canonicalize_ids(tok)
    check_special_tokens(tok, out)
    add_post_processor(tok)
    with atomic_directory(out) as tmp:
        save_tokenizer_dir(tok, tmp, cfg)
        write_json(tmp / TRAINING_ARGS, record)
    seconds = time.perf_counter() - start
    print(
        f"tokenizer: {tok.get_vocab_size()} tokens from {len(lines)} lines of "
        f"{len(corpus.documents)} documents ({corpus.num_bytes / 1e6:.1f} MB) in {seconds:.1f} s "
        f"(reading {read_s:.1f} s) -> {out}",
        flush=True,
    )
    warn_small_vocabulary(tok.get_vocab_size(), cfg, len(lines), corpus.num_bytes)
    return out


def warn_small_vocabulary(size: int, cfg: TokenizerAppConfig, lines: int, num_bytes: int) -> None:
    """Warn when training gave far fewer tokens than asked: WordPiece stops when no pair of
    pieces occurs min_frequency times, so a small corpus yields a small vocabulary (and a model
    sized for vocab_size wastes most of its embedding)."""
    if size < cfg.vocab_size / 2:
        print(
            f"warning: the tokenizer has {size} tokens, far fewer than vocab_size="
            f"{cfg.vocab_size}: the corpus is too small ({lines:,} lines, "
            f"{num_bytes / 1e6:.2f} MB of text; min_frequency={cfg.min_frequency}); add text or "
            "lower vocab_size",
            flush=True,
        )


def canonicalize_ids(tok: Tokenizer) -> None:
    """Renumber the trained vocabulary: special tokens first, then the rest sorted.

    The trainer returns the same token set on every run but numbers tokens of equal rank in the
    order of a Rust hash map, which differs between processes; a tokenizer must be identical
    (same bytes, same hash in the data manifest) for the same corpus and config. WordPiece
    segments by longest match over the set, so renumbering changes no segmentation.
    """
    vocab = tok.get_vocab(with_added_tokens=False)
    rest = sorted(t for t in vocab if t not in SPECIAL_TOKENS)
    ordered = [*SPECIAL_TOKENS, *rest]
    tok.model = models.WordPiece(
        {t: i for i, t in enumerate(ordered)}, unk_token="[UNK]", continuing_subword_prefix="##"
    )


def _batches(lines: list[str], size: int = 1000) -> Iterator[list[str]]:
    for i in range(0, len(lines), size):
        yield lines[i : i + size]


def check_special_tokens(tok: Tokenizer, where: Path | str) -> None:
    for index, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != index:
            raise UserError(
                f"{where}: special token {token} has id {tok.token_to_id(token)}, expected {index}; "
                "rebuild the tokenizer with `bert-tokenizer force=true`"
            )


def special_token_ids(tok: Tokenizer, where: Path | str) -> dict[str, int]:
    """The ids of [PAD], [UNK], [CLS], [SEP] and [MASK] in `tok` (keys as in `SPECIAL_TOKEN_IDS`).

    Any ids are accepted (Google's vocabularies have [CLS]=101, [SEP]=102, [MASK]=103) except that
    [PAD] must be 0: the model's word embedding keeps row 0 as the padding row (`padding_idx=0`,
    as Hugging Face's BERT does).
    """
    names = dict(zip(SPECIAL_TOKEN_IDS, SPECIAL_TOKENS, strict=True))
    ids = {key: tok.token_to_id(token) for key, token in names.items()}
    missing = [names[key] for key, value in ids.items() if value is None]
    if missing:
        raise UserError(
            f"{where}: the vocabulary has no {', '.join(missing)}; BERT needs "
            f"{', '.join(SPECIAL_TOKENS)} (train a tokenizer with `bert-tokenizer`, or use a BERT "
            "vocabulary that has them)"
        )
    if ids["pad"] != 0:
        raise UserError(
            f"{where}: [PAD] has id {ids['pad']}, but the model pads with id 0 (its embedding's "
            "padding row); use a vocabulary with [PAD] first, as `bert-tokenizer` and Google's "
            "BERT vocabularies have it"
        )
    if len(set(ids.values())) != len(ids):
        raise UserError(f"{where}: special tokens share ids: {ids}")
    return ids  # type: ignore[return-value]


def save_tokenizer_dir(tok: Tokenizer, out: Path, cfg: TokenizerAppConfig) -> None:
    """Write the files of a tokenizer directory that `transformers` can load."""
    tok.save(str(out / "tokenizer.json"))
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise RuntimeError("the trained vocabulary has gaps in its ids")
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    special = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    write_json(out / "special_tokens_map.json", special)
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizerFast",
            "do_lower_case": cfg.lowercase,
            "strip_accents": cfg.strip_accents,
            "tokenize_chinese_chars": True,
            "model_max_length": cfg.model_max_length,
            "clean_up_tokenization_spaces": True,
            "padding_side": "right",
            "truncation_side": "right",
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
            **special,
        },
    )


def load_tokenizer_dir(path: str | Path) -> Tokenizer:
    """Load and check a tokenizer directory (written by bert-tokenizer, or a BERT model's from
    Hugging Face); a bad one is a `UserError` saying to run bert-tokenizer."""
    path = Path(path)
    file = path / "tokenizer.json"
    if not file.is_file():
        what = "does not exist" if not path.exists() else "has no tokenizer.json"
        raise UserError(
            f"tokenizer dir {path} {what}; train one first with `bert-tokenizer` (same corpus "
            "options) or set tokenizer_dir to a directory written by it"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as err:
        raise UserError(
            f"{file} could not be loaded ({err}); rebuild it with `bert-tokenizer force=true`"
        ) from None
    special_token_ids(tok, path)
    return tok


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="tokenizer")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    train_tokenizer(cfg)


if __name__ == "__main__":
    main()
