"""Write a model in the Hugging Face format: a directory that
`transformers.BertForPreTraining.from_pretrained` loads with no missing or unexpected keys, with the
tokenizer and a model card. No `transformers` import here: the format is plain JSON and
safetensors, so exporting works where only the training dependencies are installed. Reading any
checkpoint, run or Hugging Face directory is `pretrain/weights.py`.

    bert-export checkpoint=work/runs/demo output_dir=work/export/demo
    bert-export checkpoint=work/finetune/rotten_tomatoes-pretrained-s1234 output_dir=work/export/rt

A `bert-finetune` run directory exports as `BertForSequenceClassification` /
`BertForTokenClassification` (`pretrain/finetune/hf_export.py` reads it).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from pretrain.config_keys import check_known_keys
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError, exit_on_user_error
from pretrain.model import BertConfig, hf_config_kwargs, hf_state_dict_key_map
from pretrain.weights import TIED_KEY, Pretrained, load_pretrained

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


# Our tied decoder weight: the same tensor as the word embeddings, stored once in the export.
def hf_config_dict(cfg: BertConfig) -> dict:
    """`config.json` of a `transformers.BertConfig` for the same architecture."""
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        **hf_config_kwargs(cfg),
    }


EXPORT_FILES = frozenset({"config.json", "model.safetensors", "README.md", *TOKENIZER_FILES})
"""Everything `export_hf` writes: a directory holding these files only is a previous export."""


def is_export_dir(path: Path) -> bool:
    """Whether `path` is a directory that `export_hf` wrote (and nothing else has been added)."""
    names = {p.name for p in Path(path).iterdir()}
    return {"config.json", "model.safetensors"} <= names and names <= EXPORT_FILES


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse an output directory whose replacement would lose anything but an earlier export."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise UserError(f"output_dir={output_dir} is a file; give a directory path")
    if not any(output_dir.iterdir()):
        return  # an empty directory: nothing to lose
    if not is_export_dir(output_dir):
        others = sorted(p.name for p in output_dir.iterdir() if p.name not in EXPORT_FILES)
        raise UserError(
            f"output_dir={output_dir} is not empty and not an earlier export (it holds "
            f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); give a new or empty "
            f"directory: bert-export never replaces other files"
        )
    if not overwrite:
        raise UserError(
            f"output_dir={output_dir} holds an earlier export; pass overwrite=true to replace it, "
            f"or give another output_dir"
        )


def export_hf(pretrained: Pretrained, output_dir: Path, overwrite: bool = False) -> Path:
    """Write `pretrained` as a Hugging Face directory: into a temporary sibling, renamed into
    place when complete. An existing `output_dir` is replaced only when it is empty or an earlier
    export and `overwrite` is set (`check_output_dir`)."""
    if pretrained.config.norm_position != "post":
        raise UserError(
            f"{pretrained.source}: a model.norm_position={pretrained.config.norm_position!r} model "
            "has no Hugging Face BERT equivalent (transformers' BertModel is post-LN). Use the "
            "checkpoint directly (bert-finetune model=<checkpoint>), or pretrain with "
            "model.norm_position=post to export"
        )
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    key_map = hf_state_dict_key_map(pretrained.config)
    state = pretrained.model.state_dict()
    tensors = {
        key_map[k]: v.detach().float().contiguous() for k, v in state.items() if k != TIED_KEY
    }
    return write_hf_dir(
        output_dir,
        tensors,
        hf_config_dict(pretrained.config),
        pretrained.tokenizer_dir,
        model_card(pretrained),
        overwrite,
    )


def write_hf_dir(
    output_dir: Path,
    tensors: dict,
    config: dict,
    tokenizer_dir: Path,
    card: str,
    overwrite: bool = False,
) -> Path:
    """`model.safetensors`, `config.json`, the tokenizer files and `README.md`, written into a
    temporary sibling and renamed into place when complete (`check_output_dir` first)."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{tag}")
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        _apply_umask(tmp / "model.safetensors")  # safetensors creates its file 0600
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
        (tmp / "README.md").write_text(card)
        if output_dir.exists():  # empty, or an earlier export (checked above)
            old = output_dir.with_name(f".{output_dir.name}.old-{tag}")
            output_dir.rename(old)
            tmp.rename(output_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return output_dir


def export_finetuned(run: Path, output_dir: Path, overwrite: bool = False) -> Path:
    """A `bert-finetune` run directory as a Hugging Face `BertForSequenceClassification` or
    `BertForTokenClassification` directory (`pretrain/finetune/hf_export.py` reads the run and
    refuses heads transformers cannot represent)."""
    from pretrain.finetune.hf_export import read_for_export

    check_output_dir(Path(output_dir), overwrite)  # before reading the run: fail fast
    hf = read_for_export(run)
    return write_hf_dir(
        output_dir, hf.tensors, hf.config, hf.tokenizer_dir, hf.model_card, overwrite
    )


def is_finetune_run(path: Path) -> bool:
    """A `bert-finetune` run directory (or its checkpoint): `config.yaml` and `labels.json`."""
    path = Path(path)
    run = path if path.is_dir() else path.parent.parent
    return (run / "labels.json").is_file() and (run / "config.yaml").is_file()


def _apply_umask(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def model_card(pretrained: Pretrained) -> str:
    """A README.md with what is known of the model's training: config, data manifest, metrics."""
    sections = [
        "---\nlibrary_name: transformers\ntags: [bert, fill-mask]\n---\n",
        f"# BERT ({pretrained.config.num_layers} layers, hidden "
        f"{pretrained.config.hidden_size}) pretrained with bert-pretrain\n",
        f"Exported from `{pretrained.source}`.\n",
        "## Architecture\n",
        "```json\n" + json.dumps(asdict(pretrained.config), indent=2) + "\n```\n",
    ]
    run = pretrained.run_dir
    for title, name, lang in (
        ("Final held-out metrics", "summary.json", "json"),
        ("Training config", "config.yaml", "yaml"),
        ("Data manifest", "data_manifest.json", "json"),
    ):
        if run is not None and (run / name).is_file():
            sections += [f"## {title}\n", f"```{lang}\n{(run / name).read_text().strip()}\n```\n"]
    return "\n".join(sections)


# ---------------------------------------------------------------- command line


@dataclass
class ExportConfig:
    checkpoint: str = "???"
    """A .ckpt, a run directory (its newest checkpoint), a Hugging Face directory, or a
    `bert-finetune` run directory (exported as a sequence/token classifier)."""
    output_dir: str = "???"
    """Where the Hugging Face directory is written: a new or empty directory, or an earlier export
    when `overwrite` is set. Any other existing directory is refused (nothing is deleted)."""
    overwrite: bool = False
    """Replace `output_dir` when it holds an earlier export (and only then)."""


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    check_known_keys(cfg, ExportConfig)  # a `+key=value` would otherwise be silently ignored
    if is_finetune_run(Path(cfg.checkpoint)):
        out = export_finetuned(Path(cfg.checkpoint), Path(cfg.output_dir), cfg.overwrite)
        print(
            f"exported fine-tuned run {cfg.checkpoint} -> {out} (load with transformers' "
            "AutoModelForSequenceClassification / AutoModelForTokenClassification)"
        )
        return
    pretrained = load_pretrained(cfg.checkpoint)
    out = export_hf(pretrained, Path(cfg.output_dir), overwrite=cfg.overwrite)
    print(f"exported {pretrained.source} -> {out} (load with transformers' from_pretrained)")


if __name__ == "__main__":
    main()
