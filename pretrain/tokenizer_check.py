"""Check that a tokenizer directory is the one the prepared data was built with."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.files import sha256_file
from pretrain.errors import UserError


def tokenizer_sha256(tokenizer_dir: Path) -> str:
    """The identity of a tokenizer: sha256 of its `tokenizer.json` bytes."""
    return sha256_file(tokenizer_dir / "tokenizer.json")


def check_tokenizer_matches(tokenizer_dir: Path, manifest: dict, data_dir: Path) -> None:
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise UserError(
            f"tokenizer directory {tokenizer_dir} has no tokenizer.json; point data.tokenizer_dir "
            f"at a `bert-tokenizer` output (or leave it unset to use the copy in {data_dir})"
        )
    expected = manifest["tokenizer"]["sha256"]
    actual = tokenizer_sha256(tokenizer_dir)
    if actual != expected:
        raise UserError(
            f"tokenizer {tokenizer_dir} (sha256 {actual[:12]}…) is not the one {data_dir} was built "
            f"with (manifest.json: {expected[:12]}…); use the matching tokenizer or rebuild the data "
            f"with `bert-prep tokenizer_dir={tokenizer_dir} force=true`"
        )
    # Training reads ids from vocab.txt (masking's random tokens, special ids): it must be the
    # vocabulary of the tokenizer.json checked above.
    vocab = read_vocab(tokenizer_dir) if (tokenizer_dir / "vocab.txt").is_file() else None
    expected = vocab_of_tokenizer_json(tokenizer_dir)
    if expected is not None and vocab != expected:
        raise UserError(
            f"{tokenizer_dir / 'vocab.txt'} is missing or does not match tokenizer.json beside "
            f"it ({'no file' if vocab is None else f'{len(vocab)} tokens'}); restore the "
            f"directory from its `bert-tokenizer` output, or rebuild the data with "
            f"`bert-prep force=true`"
        )


def vocab_of_tokenizer_json(tokenizer_dir: Path) -> list[str] | None:
    """Tokens of a WordPiece `tokenizer.json`, in id order; None for a model without a plain
    token -> id table (nothing to compare vocab.txt with)."""
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = (spec.get("model") or {}).get("vocab")
    if not isinstance(vocab, dict):
        return None
    return [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def read_vocab(tokenizer_dir: Path) -> list[str]:
    """Tokens of `vocab.txt`, in id order."""
    return (tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
