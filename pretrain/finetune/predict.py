"""`bert-predict`: run a fine-tuned model (or any encoder, for embeddings) on new texts.

    bert-predict model=work/finetune/NAME input=texts.csv output=predictions.jsonl
    bert-predict model=work/finetune/NAME text="a review to classify"        # printed
    bert-predict model=work/export/demo task=embed input=texts.txt output=vectors.npy

`model=` is a `bert-finetune` run directory (its best epoch's weights, labels, tokenizer and
`task.max_seq_length`) or its `bert-export` directory (a Hugging Face `BertFor{Sequence,Token}
Classification`: labels from `config.json`'s `id2label`, at most `max_position_embeddings`
pieces); with `task=embed` also a pretraining run, checkpoint or exported Hugging Face directory.
Inputs: `.txt` (one text per line), `.csv` / `.jsonl` / `.parquet` with a `text_column` (and
`text_pair_column` for sentence pairs), or `text="..."`. `quantize=int8` runs the model's Linear
layers in int8 on the CPU (`quantize_int8`). Outputs:

- sequence tasks (`.jsonl` / `.csv`): `label` and the softmax probability of every label;
- token tasks: word-level entity spans `{start, end, label, text, score}` with character offsets
  into the text, aggregated as transformers' `aggregation_strategy="first"` does (each word takes
  its first WordPiece's label and probability, B-/I- words of one type merge into a span, the
  span's score is the mean over its words); a `head=crf` run's words take the Viterbi path's
  labels instead, each scored by its label's marginal probability (forward-backward), and a span's
  score is the mean of those over its words;
- `task=embed` (`.npy`, or `.parquet` with `text` and `embedding` columns): the mean of the last
  hidden states over the real tokens ([CLS]/[SEP] included, padding excluded; `pooling=mean`) or
  the pooled [CLS] output (`pooling=cls`).

Texts longer than the maximum (the run's `task.max_seq_length`, or `max_position_embeddings` for
an embedding model; `max_length=` lowers it) are truncated, as in fine-tuning, and their number is
printed: a sequence's label reads only its first pieces, and a token task finds no entity in the
cut-off words. Inputs are sorted by length into batches (padding only to each batch's longest) and
the outputs are written in input order.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from pretrain.config_keys import to_schema
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError, exit_on_user_error
from pretrain.finetune.data import SEQUENCE

EMBED = "embed"
INPUTS = (".txt", ".csv", ".jsonl", ".parquet")
PREDICTION_OUTPUTS = (".jsonl", ".csv")
EMBEDDING_OUTPUTS = (".npy", ".parquet")
QUANTIZE = ("none", "int8")
PROGRESS_MIN_TEXTS = 1000
"""A progress bar is drawn for this many texts or more, and only on a terminal."""


@dataclass
class PredictConfig:
    """Everything `bert-predict` needs."""

    model_path: str = "???"
    """A bert-finetune run directory or its bert-export directory; with task=embed also a
    pretraining run, checkpoint or Hugging Face directory. On the command line `model=PATH` is
    accepted for it."""
    input: str | None = None
    """A .txt (one text per line), .csv, .jsonl or .parquet file."""
    text: str | None = None
    """One text instead of `input`; its result is printed unless `output` is set."""
    output: str | None = None
    """.jsonl or .csv (predictions), .npy or .parquet (task=embed)."""
    task_type: str | None = None
    """None: the fine-tuned run's own task; `embed`: vectors. On the command line `task=embed`."""
    text_column: str = "text"
    text_pair_column: str | None = None
    """Second segment of sentence-pair tasks (csv/jsonl/parquet inputs)."""
    pooling: str = "mean"
    """task=embed: `mean` of the last hidden states over the real tokens, or `cls` (pooled)."""
    batch_size: int = 64
    max_length: int | None = None
    """WordPieces per text, [CLS]/[SEP] included; None: the model's (see the module docstring)."""
    device: str = "auto"
    """`auto` (CUDA when available; the CPU with quantize=int8), `cpu`, `cuda`, `cuda:1`, ..."""
    quantize: str = "none"
    """`none`, or `int8`: PyTorch's dynamic int8 quantization of every Linear layer (int8 weights,
    activations quantized per batch on the fly), applied after loading; CPU only."""

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize={self.quantize!r} is unknown; use none or int8")
        if self.task_type not in (None, EMBED):
            raise ValueError(
                f"task={self.task_type!r} is unknown; leave it unset (the fine-tuned run's task) "
                "or use task=embed"
            )
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={self.pooling!r} is unknown; use mean or cls")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 or null, got {self.max_length}")


# --------------------------------------------------------------------------- inputs


def read_texts(
    path: Path, text_column: str, pair_column: str | None
) -> tuple[list[str], list[str] | None]:
    """The texts (and second segments) of an input file, in file order."""
    if not path.is_file():
        raise UserError(
            f"input={path} does not exist; give a .txt (one text per line), .csv, .jsonl or "
            '.parquet file, or text="..."'
        )
    suffix = path.suffix.lower()
    if suffix not in INPUTS:
        raise UserError(f"input={path}: unknown extension {suffix!r}; use one of {INPUTS}")
    if suffix == ".txt":
        texts = path.read_text(encoding="utf-8").splitlines()
        if not any(t.strip() for t in texts):
            raise UserError(f"input={path} holds no text; give a file with one text per line")
        if pair_column is not None:
            raise UserError(
                f"text_pair_column={pair_column} needs a .csv, .jsonl or .parquet input; "
                f"{path} is a .txt"
            )
        return texts, None
    from pretrain.finetune.data import read_rows

    rows = read_rows(path)
    if not rows:
        raise UserError(f"input={path} holds no rows; give a file with at least one text")
    for column in filter(None, (text_column, pair_column)):
        if column not in rows[0]:
            role = "text_column" if column == text_column else "text_pair_column"
            raise UserError(
                f"input={path} has no column {column!r}; its columns are {sorted(rows[0])}: "
                f"set {role}= to one of them"
            )

    def strings(column: str) -> list[str]:
        return ["" if r.get(column) is None else str(r[column]) for r in rows]

    return strings(text_column), strings(pair_column) if pair_column else None


def check_output(output: str | None, embed: bool) -> None:
    if output is None:
        return
    allowed = EMBEDDING_OUTPUTS if embed else PREDICTION_OUTPUTS
    suffix = Path(output).suffix.lower()
    if suffix not in allowed:
        other = "predictions: .jsonl or .csv" if embed else "task=embed: .npy or .parquet"
        raise UserError(
            f"output={output}: unknown extension {suffix!r}; use {' or '.join(allowed)} ({other})"
        )


# --------------------------------------------------------------------------- batching


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int):
    """Encodings truncated to `max_length` pieces, and how many texts were cut."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    inputs = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
    encodings = tokenizer.encode_batch(inputs)
    return encodings, sum(1 for e in encodings if e.overflowing)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad(encodings: list, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in encodings)
    n = len(encodings)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    starts = torch.zeros((n, width), dtype=torch.bool)  # each word's first piece (a CRF's words)
    for row, e in enumerate(encodings):
        k = len(e.ids)
        ids[row, :k] = torch.tensor(e.ids)
        types[row, :k] = torch.tensor(e.type_ids)
        mask[row, :k] = 1
        starts[row, :k] = torch.tensor(word_start_flags(e.word_ids))
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
             "word_starts": starts}  # fmt: skip
    return {k: v.to(device) for k, v in batch.items()}


def run_batches(
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    encodings: list,
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> list[np.ndarray]:
    """`fn` on length-sorted batches; one float32 array per input, in input order (token outputs
    cut to each input's own length)."""
    results: list = [None] * len(encodings)
    batches = length_batches([len(e.ids) for e in encodings], batch_size)
    progress = None
    if len(encodings) >= PROGRESS_MIN_TEXTS and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(encodings), unit="text", file=sys.stderr)
    with torch.inference_mode():
        for indices in batches:
            out = fn(pad([encodings[i] for i in indices], pad_id, device)).float().cpu().numpy()
            for row, i in enumerate(indices):
                results[i] = out[row, : len(encodings[i].ids)] if out.ndim == 3 else out[row]
            if progress is not None:
                progress.update(len(indices))
    if progress is not None:
        progress.close()
    return results


# --------------------------------------------------------------------------- outputs


def _tag(label: str) -> tuple[str, str]:
    """("B" or "I", entity type) as transformers' `get_tag`: `O` is an "I" of type `O`."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def word_start_flags(word_ids: list[int | None]) -> list[bool]:
    """True at each word's first piece, as `entity_spans` groups pieces into words."""
    flags, previous = [], None
    for word in word_ids:
        flags.append(word is not None and word != previous)
        if word is not None:
            previous = word
    return flags


def entity_spans(
    encoding, probs: np.ndarray, labels: list[str], text: str, path: np.ndarray | None = None
) -> list[dict]:
    """Word-level entities of one text from per-piece probabilities (`aggregation_strategy=
    "first"`): a word's label and score are its first piece's argmax (with `path`, per-piece label
    ids of a CRF's Viterbi path: that label and its probability); consecutive words merge while
    the type stays and the next word is not a `B-`; `O` spans are dropped."""
    words: list[tuple[int, int, str, float]] = []
    previous = None
    for pos, (word, (start, end)) in enumerate(
        zip(encoding.word_ids, encoding.offsets, strict=True)
    ):
        if word is None or pos >= len(probs):
            continue
        if word == previous:  # a later piece of the same word: extend its end
            words[-1] = (words[-1][0], end, words[-1][2], words[-1][3])
            continue
        previous = word
        best = int(probs[pos].argmax()) if path is None else int(path[pos])
        words.append((start, end, labels[best], float(probs[pos][best])))
    spans: list[dict] = []
    group: list[tuple[int, int, str, float]] = []

    def flush() -> None:
        if group and _tag(group[0][2])[1] != "O":
            start, end = group[0][0], group[-1][1]
            spans.append(
                {
                    "start": start,
                    "end": end,
                    "label": _tag(group[0][2])[1],
                    "text": text[start:end],
                    "score": float(np.mean([w[3] for w in group])),
                }
            )

    for w in words:
        bi, kind = _tag(w[2])
        if group and kind == _tag(group[-1][2])[1] and bi != "B":
            group.append(w)
        else:
            flush()
            group = [w]
    flush()
    return spans


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return
    flat = []
    for r in rows:  # csv: one column per label probability; entities as a JSON string
        row = {k: v for k, v in r.items() if k not in ("probabilities", "entities")}
        row.update({f"prob_{k}": v for k, v in r.get("probabilities", {}).items()})
        if "entities" in r:
            row["entities"] = json.dumps(r["entities"], ensure_ascii=False)
        flat.append(row)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)


def write_embeddings(vectors: np.ndarray, texts: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, vectors)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": texts, "embedding": [v.tolist() for v in vectors]})
    pq.write_table(table, path)


# --------------------------------------------------------------------------- int8


def int8_engine(supported: list[str]) -> str:
    """The quantized CPU backend to run int8 Linear layers on, from
    `torch.backends.quantized.supported_engines`: the one torch chose when it has kernels (x86 /
    fbgemm / onednn on x86, qnnpack on ARM), else the first one there is; refused without any."""
    engines = [e for e in supported if e != "none"]
    if not engines:
        raise UserError(
            f"quantize=int8: this torch build ({torch.__version__}) has no quantized CPU kernels "
            f"(torch.backends.quantized.supported_engines is {supported}); use quantize=none"
        )
    current = torch.backends.quantized.engine
    return current if current in engines else engines[0]


def quantize_int8(model: torch.nn.Module) -> int:
    """Replace every Linear layer of `model` (in place) by PyTorch's dynamically quantized int8
    Linear, for CPU inference; returns how many were replaced.

    Weights are stored int8 (per-tensor scale); each call quantizes its activations with the
    batch's own range and multiplies in int8 (fbgemm / onednn / qnnpack kernels). This is
    `torch.ao.quantization.quantize_dynamic`, deprecated in favour of torchao but still in torch
    2.13: torchao 0.18's `Int8DynamicActivationInt8WeightConfig` ran bert-mini (batch 32 × 128
    pieces, 2 CPU threads, eager) 1.2× slower than fp32 where `quantize_dynamic` ran it 1.7×
    faster."""
    torch.backends.quantized.engine = int8_engine(list(torch.backends.quantized.supported_engines))
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise UserError(
            f"quantize=int8 needs torch.ao.quantization.quantize_dynamic, which torch "
            f"{torch.__version__} no longer has (it was tested with torch 2.13); use quantize=none"
        ) from None
    import warnings

    from torch import nn
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from pretrain.linear import Linear

    # The project's Linear (pretrain/linear.py) is an nn.Linear subclass, which quantize_dynamic
    # matches by exact type and would skip: swap each for a plain nn.Linear on the same tensors.
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is Linear:
                plain = nn.Linear(child.in_features, child.out_features, device="meta")
                plain.weight, plain.bias = child.weight, child.bias  # the trained tensors
                setattr(module, name, plain)
        if getattr(module, "fused_qkv", False):
            # The fused Q/K/V path concatenates the three float weights, which int8 layers no
            # longer hold: run the three projections as separate (quantized) layers.
            module.fused_qkv = False
    float_linears = sum(1 for m in model.modules() if type(m) is nn.Linear)
    with warnings.catch_warnings():
        # torch 2.13 warns on every call that this API and its qint8 tensors are deprecated;
        # int8_engine and the ImportError above are where that matters.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    quantized = sum(1 for m in model.modules() if isinstance(m, Int8Linear))
    if quantized != float_linears or any(isinstance(m, nn.Linear) for m in model.modules()):
        raise RuntimeError(f"int8: {quantized} of {float_linears} Linear layers were quantized")
    return quantized


# --------------------------------------------------------------------------- the app


def _device(name: str, quantize: str = "none") -> torch.device:
    if quantize == "int8":  # the dynamic int8 kernels are CPU kernels
        if name not in ("auto", "cpu"):
            raise UserError(
                f"quantize=int8 runs on the CPU only (PyTorch's dynamic int8 kernels), not "
                f"device={name}; use device=cpu (or auto), or quantize=none on the GPU"
            )
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use device=cpu or auto")
    return torch.device(name)


def predict(cfg: PredictConfig) -> list[dict] | np.ndarray:
    """Predictions (one dict per text) or embeddings (texts × hidden), in input order; written to
    `cfg.output` when set, printed when the input was `text=`."""
    embed = cfg.task_type == EMBED
    if (cfg.input is None) == (cfg.text is None):
        raise UserError('give input=FILE (with output=FILE) or text="...", not both or neither')
    if cfg.input is not None and cfg.output is None:
        raise UserError(
            "input= needs output=FILE (.jsonl or .csv; .npy or .parquet with task=embed)"
        )
    check_output(cfg.output, embed)
    if cfg.input is not None:
        texts, pairs = read_texts(Path(cfg.input), cfg.text_column, cfg.text_pair_column)
    else:
        texts, pairs = [cfg.text], None
    device = _device(cfg.device, cfg.quantize)
    if cfg.quantize == "int8":  # before loading: a platform without the kernels fails fast
        int8_engine(list(torch.backends.quantized.supported_engines))
    from pretrain.finetune.finetuned import load_encoder, load_finetuned

    if embed:
        loaded = load_encoder(cfg.model_path)
        model, tokenizer, limit = loaded.encoder, loaded.tokenizer, loaded.max_length
    else:
        run = load_finetuned(cfg.model_path)
        model, tokenizer, limit = run.module, run.tokenizer, run.max_length
    max_length = min(limit, cfg.max_length or limit)
    model = model.to(device).eval()
    if cfg.quantize == "int8":
        quantize_int8(model)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    started = time.perf_counter()
    encodings, cut = encode_texts(tokenizer, texts, pairs, max_length)

    if embed:

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            hidden, pooled = model(
                batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
            )
            if cfg.pooling == "cls":
                return pooled
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

        vectors = np.stack(run_batches(forward, encodings, cfg.batch_size, pad_id, device))
        result: list[dict] | np.ndarray = vectors.astype(np.float32)
    else:
        crf = run.module.crf is not None
        # A CRF run's pieces carry [marginals of every label, Viterbi label id] (crf_outputs).
        fn = model.crf_outputs if crf else model
        outputs = run_batches(fn, encodings, cfg.batch_size, pad_id, device)
        rows = []
        for i, logits in enumerate(outputs):
            path = logits[:, -1].astype(np.int64) if crf else None
            probs = logits[:, :-1].astype(np.float64) if crf else softmax(logits.astype(np.float64))
            row: dict = {"text": texts[i]}
            if pairs is not None:
                row["text_pair"] = pairs[i]
            if run.task_type == SEQUENCE:
                row["label"] = run.labels[int(probs.argmax())]
                row["probabilities"] = dict(zip(run.labels, map(float, probs), strict=True))
            else:
                row["entities"] = entity_spans(encodings[i], probs, run.labels, texts[i], path)
            rows.append(row)
        result = rows
    seconds = time.perf_counter() - started

    if cfg.output is not None:
        out = Path(cfg.output)
        if embed:
            write_embeddings(result, texts, out)  # type: ignore[arg-type]
        else:
            write_rows(result, out)  # type: ignore[arg-type]
    elif embed:
        print(json.dumps([round(float(x), 6) for x in result[0]]))
    else:
        print(json.dumps(result[0], ensure_ascii=False))
    if cut:
        print(
            f"{cut} of {len(texts)} texts were longer than {max_length} WordPieces and were "
            "truncated (the model reads only their first pieces)",
            file=sys.stderr,
        )
    where = f" -> {cfg.output}" if cfg.output else ""
    print(
        f"{len(texts)} texts in {seconds:.2f}s ({len(texts) / max(seconds, 1e-9):.1f} texts/s) "
        f"on {device}{' (int8)' if cfg.quantize == 'int8' else ''}{where}",
        file=sys.stderr,
    )
    return result


def register_configs() -> None:
    """Make the schema the base of `conf/predict.yaml` (see its defaults list)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


def to_typed(cfg: DictConfig) -> PredictConfig:
    """Composed DictConfig -> the validated dataclass; a bad value becomes a `UserError`."""
    return to_schema(cfg, PredictConfig)


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    predict(to_typed(cfg))


def command_line(args: list[str]) -> list[str]:
    """`model=PATH` -> `model_path=PATH` and `task=X` -> `task_type=X` (`model` and `task` are
    config groups of the shared `conf/`); `text=...` quoted, so commas and colons stay text."""
    out = []
    for a in args:
        if a.startswith("model="):
            a = "model_path=" + a[6:]
        elif a.startswith("task="):
            a = "task_type=" + a[5:]
        elif a.startswith("text=") and not a[5:].startswith(("'", '"')):
            a = "text='" + a[5:].replace("'", "\\'") + "'"
        out.append(a)
    return out


def main() -> None:
    """`bert-predict`."""
    sys.argv[1:] = command_line(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
