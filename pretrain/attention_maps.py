"""bert-attention: draw what a trained model attends to in one text.

    bert-attention model=work/runs/demo 'text="the state of the union is strong"'
    bert-attention model=work/export/demo text=hello output=attention.html        # interactive page

`model=` is anything `pretrain/weights.py:load_pretrained` reads (a checkpoint, a run directory or a
Hugging Face directory); the text is tokenized with the model's own WordPiece tokenizer, with
`[CLS]` and `[SEP]` added as in pretraining. The figure (png, svg or pdf, through matplotlib, which
only this command needs: `pip install 'bert-pretrain[plots]'`) is one grid: a row per layer, a
heat map per head (rows: the token attending, "from"; columns: the token attended to, "to"), and a
last column with the attention rollout through that layer (Abnar & Zuidema, 2020: `rollout`), so
the bottom-right map is the rollout of the whole model. `format=html` (or an `.html` output)
writes one self-contained page instead: no network, the data and a small script inline.
"""

from __future__ import annotations

import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pretrain.config_keys import to_schema
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError, exit_on_user_error
from pretrain.weights import load_pretrained

FORMATS = ("png", "svg", "pdf", "html")
"""What `format=` takes: the three image formats are drawn by matplotlib, html by `write_html`."""
PLOTS_HINT = "pip install 'bert-pretrain[plots]'"


@dataclass
class AttentionConfig:
    model_path: str = "???"
    """A .ckpt, a run directory (its newest checkpoint), or a Hugging Face directory. `model=PATH`
    on the command line sets it (`model` is a config group of the shared `conf/`)."""
    text: str = "???"
    """The text to look at; quote it on the command line: 'text="Hello, world."'."""
    output: str | None = None
    """File to write; its directory must exist. None: `attention.<format>` here."""
    format: str | None = None
    """png, svg, pdf or html. None: from the output's suffix, png when that says nothing."""
    dpi: int = 120
    """Resolution of a png."""


ConfigStore.instance().store(name="attention_schema", node=AttentionConfig)


# ---------------------------------------------------------------- computing


def attention_rollout(attentions: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) after each layer: (L, nh, T, T) -> (L, T, T).

    Each layer's heads are averaged, the identity is added for the residual connection and rows
    are renormalised to sum to 1 (Â = (Ā + I) / 2); then R₁ = Â₁ and R_l = Â_l · R_(l-1). Row i
    of R_l is how much token i's representation after layer l draws on each input token.
    """
    mean = attentions.double().mean(dim=1)  # (L, T, T)
    eye = torch.eye(mean.size(-1), dtype=mean.dtype)
    rolled, out = eye, []
    for a in mean:
        a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)
        rolled = a @ rolled
        out.append(rolled)
    return torch.stack(out).to(attentions.dtype)


def load_tokenizer(tokenizer_dir: Path):
    """The model's `tokenizers.Tokenizer`: tokenizer.json, else a WordPiece one from vocab.txt (a
    Hugging Face directory may hold only that), never truncating."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    else:
        settings_file = tokenizer_dir / "tokenizer_config.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        tokenizer = BertWordPieceTokenizer(
            str(tokenizer_dir / "vocab.txt"), lowercase=settings.get("do_lower_case", True)
        )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def encode(tokenizer, text: str, max_positions: int) -> tuple[list[int], list[str]]:
    """(ids, WordPiece tokens) of `[CLS] text [SEP]`; refuses an empty or too long text."""
    if not text.strip():
        raise UserError("text is empty; give the text to look at: 'text=\"the cat sat\"'")
    enc = tokenizer.encode(text)
    if len(enc.ids) <= 2:  # [CLS] [SEP] only: nothing the normalizer keeps
        raise UserError(f"text={text!r} has no tokens; give some words")
    if len(enc.ids) > max_positions:
        raise UserError(
            f"text is {len(enc.ids)} tokens with [CLS] and [SEP], longer than the model's "
            f"{max_positions} positions (max_position_embeddings); shorten it"
        )
    return list(enc.ids), list(enc.tokens)


@torch.no_grad()
def compute_attentions(model, ids: list[int]) -> torch.Tensor:
    """(L, nh, T, T) attention probabilities of one unpadded sequence, in float32."""
    model.eval()
    input_ids = torch.tensor([ids])
    attentions = model.attentions(input_ids, torch.zeros_like(input_ids), None)
    return torch.stack([a[0].float() for a in attentions])


# ---------------------------------------------------------------- drawing


def _figure_module():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            f"drawing a png, svg or pdf needs matplotlib, which is not installed: {PLOTS_HINT} "
            "(or format=html, which needs nothing)"
        ) from None
    return Figure


def draw_figure(
    tokens: list[str],
    attentions: torch.Tensor,
    rollout: torch.Tensor,
    path: Path,
    fmt: str,
    title: str,
    dpi: int = 120,
) -> Path:
    """The grid: a row per layer, a column per head and a last one with the rollout so far.

    Sizes follow the sequence: each token gets a cell of 0.09–0.22 in and labels are set in a font
    that fits it (3.5–9 pt), x labels turned upright so they never overlap. Each panel's colours
    run from 0 to its own largest value (in its title) on a square-root scale, so the pattern of a
    nearly uniform head (an undertrained model's) is visible too.
    """
    Figure = _figure_module()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import PowerNorm

    L, nh, T, _ = attentions.shape
    cell = min(max(5.5 / T, 0.09), 0.22)  # inches per token
    font = min(max(cell * 72 * 0.62, 3.5), 9.0)
    label = max(len(t) for t in tokens) * font * 0.62 / 72 + 0.15  # inches taken by tick labels
    heat = cell * T
    cols = nh + 1
    fig = Figure(
        figsize=(cols * (heat + label + 0.25) + 1.0, L * (heat + label + 0.45) + 0.9),
        layout="constrained",
    )
    axes = fig.subplots(L, cols, squeeze=False)
    image = None
    for layer in range(L):
        for col in range(cols):
            ax = axes[layer, col]
            if col < nh:
                data, name = attentions[layer, col], f"layer {layer + 1} · head {col + 1}"
            else:
                data = rollout[layer]
                name = f"rollout · layers 1–{layer + 1}" if layer else "rollout · layer 1"
            top = max(float(data.max()), 1e-6)
            norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=top)
            image = ax.imshow(data.numpy(), cmap="viridis", norm=norm, interpolation="nearest")
            ax.set_title(
                f"{name}  (max {top:.2f})",
                fontsize=max(font, 7.0),
                fontweight="bold" if col == nh else None,
            )
            ax.set_xticks(range(T), tokens, rotation=90, fontsize=font)
            ax.set_yticks(range(T), tokens, fontsize=font)
            ax.tick_params(length=0, pad=1.5)
            if col == 0:
                ax.set_ylabel("from (query)", fontsize=max(font, 7.0))
            if layer == L - 1:
                ax.set_xlabel("to (key)", fontsize=max(font, 7.0))
    colorbar = fig.colorbar(
        ScalarMappable(PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0), image.get_cmap()),
        ax=axes,
        shrink=min(1.0, 3.0 / L),
        aspect=30,
        pad=0.01,
    )
    colorbar.set_label("fraction of the panel's max (square-root scale)", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, format=fmt, dpi=dpi)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}
label{margin-right:1em}#tip{min-height:1.4em;font-family:monospace}
#tokens span{display:inline-block;padding:2px 3px;margin:1px;border-radius:3px;cursor:pointer}
canvas{image-rendering:pixelated}
</style></head><body>
<h3>__TITLE__</h3>
<p><label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
Rows attend (query, "from") to columns (key, "to"). Rollout: Abnar &amp; Zuidema (2020), through
the chosen layer.</p>
<canvas id="map"></canvas>
<div id="tip"></div>
<p>Hover a token to shade what it attends to in this map:</p>
<div id="tokens"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const T = D.tokens.length, L = D.attentions.length, NH = D.attentions[0].length;
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
for (let l = 0; l < L; l++) layerSel.add(new Option(String(l + 1), l));
for (let h = 0; h < NH; h++) headSel.add(new Option(String(h + 1), h));
headSel.add(new Option("mean of heads", "mean"));
headSel.add(new Option("rollout", "rollout"));
function matrix() {
  const l = +layerSel.value, h = headSel.value;
  if (h === "rollout") return D.rollout[l];
  if (h === "mean") return D.attentions[l][0].map((row, i) => row.map((_, j) => {
    let s = 0; for (let k = 0; k < NH; k++) s += D.attentions[l][k][i][j]; return s / NH; }));
  return D.attentions[l][+h];
}
function colour(p) {  // white -> dark blue on a square-root scale
  const t = Math.sqrt(Math.max(0, Math.min(1, p)));
  return `rgb(${Math.round(255 - 222 * t)},${Math.round(255 - 180 * t)},${Math.round(255 - 80 * t)})`;
}
const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
const cell = Math.max(8, Math.min(28, Math.floor(640 / T)));
const font = Math.max(8, Math.min(13, cell - 2));
ctx.font = font + "px sans-serif";
const margin = Math.ceil(Math.max(...D.tokens.map(t => ctx.measureText(t).width))) + 8;
canvas.width = margin + T * cell + 2; canvas.height = margin + T * cell + 2;
let current = matrix();
function draw() {
  current = matrix();
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = font + "px sans-serif"; ctx.fillStyle = "#222";
  ctx.textBaseline = "middle";
  for (let i = 0; i < T; i++) {
    ctx.textAlign = "right";
    ctx.fillText(D.tokens[i], margin - 4, margin + (i + 0.5) * cell);
    ctx.save(); ctx.translate(margin + (i + 0.5) * cell, margin - 4); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left"; ctx.fillText(D.tokens[i], 0, 0); ctx.restore();
  }
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
    ctx.fillStyle = colour(current[i][j]);
    ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell);
  }
  shade(-1);
}
const tip = document.getElementById("tip"), tokenBox = document.getElementById("tokens");
const spans = D.tokens.map((t, i) => {
  const s = document.createElement("span"); s.textContent = t;
  s.onmouseenter = () => shade(i); tokenBox.appendChild(s); return s; });
function shade(i) {
  spans.forEach((s, j) => {
    s.style.background = i < 0 ? "#eee" : colour(current[i][j]);
    s.style.outline = j === i ? "2px solid #c00" : "none";
    s.style.color = i >= 0 && current[i][j] > 0.3 ? "#fff" : "#222";
  });
}
canvas.onmousemove = e => {
  const r = canvas.getBoundingClientRect();
  const j = Math.floor((e.clientX - r.left - margin) / cell), i = Math.floor((e.clientY - r.top - margin) / cell);
  if (i < 0 || j < 0 || i >= T || j >= T) { tip.textContent = ""; return; }
  tip.textContent = `${D.tokens[i]} (${i}) \\u2192 ${D.tokens[j]} (${j}): ${current[i][j].toFixed(4)}`;
  shade(i);
};
layerSel.onchange = draw; headSel.onchange = draw;
layerSel.value = L - 1; headSel.value = "rollout"; draw();
</script></body></html>
"""


def write_html(
    tokens: list[str], attentions: torch.Tensor, rollout: torch.Tensor, path: Path, title: str
) -> Path:
    """One self-contained page: the probabilities inline as JSON (4 decimals), drawn on a canvas
    by an inline script; a layer and a head (or their mean, or the rollout) are chosen from two
    menus, hovering shows each value and shades the text by the hovered token's attention."""
    data = {
        "tokens": tokens,
        "attentions": attentions.numpy().round(4).tolist(),
        "rollout": rollout.numpy().round(4).tolist(),
    }
    # "</" cannot close the JSON's <script> element when escaped (tokens are arbitrary text).
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------- command


def output_path(output: str | None, fmt: str | None) -> tuple[Path, str]:
    """(file to write, format), refusing an unknown format or a directory that does not exist."""
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        fmt = {"": "png", "htm": "html"}.get(suffix, suffix)
        if fmt not in FORMATS:
            raise UserError(
                f"output={output}: unknown format {suffix!r} (from its suffix); name the file "
                f".{', .'.join(FORMATS)}, or set format="
            )
    if fmt.lower() not in FORMATS:
        raise UserError(f"unknown format={fmt!r}; choose one of {', '.join(FORMATS)}")
    fmt = fmt.lower()
    path = Path(output) if output else Path(f"attention.{fmt}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(
            f"output={path}: directory {parent} does not exist; create it or write elsewhere"
        )
    return path, fmt


def attention_maps(cfg: AttentionConfig) -> Path:
    """Everything `bert-attention` does, callable in-process: returns the file written."""
    path, fmt = output_path(cfg.output, cfg.format)
    if not cfg.text.strip():  # before loading anything
        raise UserError("text is empty; give the text to look at: 'text=\"the cat sat\"'")
    if fmt != "html":
        _figure_module()  # a missing matplotlib is reported before the model is loaded
    pretrained = load_pretrained(cfg.model_path)
    tokenizer = load_tokenizer(Path(pretrained.tokenizer_dir))
    ids, tokens = encode(tokenizer, cfg.text, pretrained.config.max_position_embeddings)
    attentions = compute_attentions(pretrained.model, ids)
    rollout = attention_rollout(attentions)
    shown = cfg.text if len(cfg.text) <= 80 else cfg.text[:77] + "..."
    title = f"{pretrained.source}: “{shown}”"
    if fmt == "html":
        return write_html(tokens, attentions, rollout, path, title)
    return draw_figure(tokens, attentions, rollout, path, fmt, title, dpi=cfg.dpi)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="attention")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    for key, name in (("model_path", "model"), ("text", "text")):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(f"{name}= is required: bert-attention model=PATH 'text=\"...\"'")
    config = to_schema(cfg, AttentionConfig)  # unknown keys and bad values: one line
    path = attention_maps(config)
    print(f"wrote {path} ({math.ceil(path.stat().st_size / 1024)} KiB)")


def main() -> None:
    """`bert-attention`; `model=PATH` on the command line means `model_path=PATH`, as in
    bert-finetune."""
    sys.argv[1:] = ["model_path=" + a[6:] if a.startswith("model=") else a for a in sys.argv[1:]]
    _hydra_main()


if __name__ == "__main__":
    main()
