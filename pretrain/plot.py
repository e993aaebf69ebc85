"""bert-plot: the training curves of one or several `bert-pretrain` runs, from their CSV metrics.

    bert-plot run=work/runs/demo                                   # -> work/runs/demo/curves.png
    bert-plot 'run=[work/runs/cpu_budget_phase1,work/runs/cpu_budget_phase2]' output=phases.png

One figure of six panels against the optimizer step: training loss, MLM accuracy, NSP accuracy,
learning rate, tokens/s and gradient norm. Training values are drawn per logged step (thin) and
smoothed (thick); held-out values (the periodic validations) are circles, and the final evaluation
on the whole validation split (the step `summary.json` records) a star. Several runs share the
panels, one colour each, named by their directory in the legend.

Only the files the CSV logger writes are read (`csv/version_N/metrics.csv`, one folder per launch:
a resumed run's later launch replaces the steps it repeats) and `summary.json`; no checkpoint is
opened. matplotlib is needed (`pip install 'bert-pretrain[plots]'`), not for training: a finished
`bert-pretrain` run draws its `curves.png` when matplotlib is importable and says in one line when
it is not (`draw_after_training`).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pretrain.config_keys import to_schema
from pretrain.config_path import CONF_DIR
from pretrain.errors import UserError, exit_on_user_error

PLOTS_HINT = "pip install 'bert-pretrain[plots]'"
FORMATS = ("png", "svg", "pdf")
CURVES = "curves.png"
"""A run directory's figure: bert-plot's default output and what the end of training writes."""
METRICS_GLOB = "csv/version_*/metrics.csv"
"""Where `logger=csv` (`pretrain/loggers.py`) writes each launch's metrics in a run directory."""


@dataclass
class PlotConfig:
    run: list[str] = "???"  # type: ignore[assignment]  # OmegaConf's mark of a required value
    """Run directories written by bert-pretrain: `run=DIR` for one, `run=[A,B]` to overlay."""
    output: str | None = None
    """The figure (.png, .svg or .pdf); its directory must exist. None: `curves.png` in the run
    directory for one run, in the current directory for several."""
    dpi: int = 120
    """Resolution of a png."""

    def __post_init__(self) -> None:
        if self.dpi <= 0:
            raise ValueError(f"dpi must be positive, got {self.dpi}")


ConfigStore.instance().store(name="plot_schema", node=PlotConfig)


# ---------------------------------------------------------------- reading a run


Series = list[tuple[int, float]]
"""(step, value) pairs, by increasing step."""


@dataclass
class RunCurves:
    """What one run logged, read back."""

    name: str
    """The legend's name: the run directory's (its parent's too when two runs share it)."""
    metrics: dict[str, Series]
    """Every logged metric (`train/loss`, `val/mlm_acc`, ...) as its (step, value) series."""
    final_step: int | None
    """The step of the final whole-split evaluation (`summary.json`); None for an unfinished run."""


def _version(path: Path) -> int:
    """N of `csv/version_N/metrics.csv`: launches in order (version_10 after version_9)."""
    suffix = path.parent.name.rpartition("_")[2]
    return int(suffix) if suffix.isdigit() else -1


def read_run(run_dir: str | Path) -> RunCurves:
    """A run directory's metrics, from every launch's CSV file; one-line errors for a path that is
    not a run or a run that logged nothing this can draw."""
    run = Path(run_dir)
    if not run.is_dir():
        what = "is a file" if run.exists() else "does not exist"
        raise UserError(
            f"run={run} {what}; give a bert-pretrain run directory (e.g. work/runs/demo)"
        )
    files = sorted(run.glob(METRICS_GLOB), key=_version)
    if not files:
        raise UserError(f"run={run} has no CSV metrics ({METRICS_GLOB}); {_no_csv_reason(run)}")
    by_metric: dict[str, dict[int, float]] = {}
    for path in files:  # later launches last: their values replace the steps they repeat
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if not (row.get("step") or "").strip():
                    continue
                step = int(float(row["step"]))
                for key, value in row.items():
                    if key in ("step", "epoch") or value in (None, ""):
                        continue
                    try:
                        by_metric.setdefault(key, {})[step] = float(value)
                    except ValueError:
                        continue  # a non-numeric column is nothing to draw
    if "train/loss" not in by_metric:
        raise UserError(
            f"run={run}: its metrics ({', '.join(str(p.relative_to(run)) for p in files)}) hold "
            "no training loss (train/loss) yet; train it for at least trainer.log_every_n_steps "
            "steps, or give a bert-pretrain run directory"
        )
    summary = run / "summary.json"
    final_step = None
    if summary.is_file():
        try:
            final_step = int(json.loads(summary.read_text())["step"])
        except (ValueError, KeyError, TypeError):
            final_step = None  # an unreadable summary: draw without the final point
    metrics = {k: sorted(v.items()) for k, v in by_metric.items()}
    return RunCurves(run.resolve().name, metrics, final_step)


def _no_csv_reason(run: Path) -> str:
    """Why a run has no CSV metrics, from its saved config, and what to do."""
    logger = None
    config = run / "config.yaml"
    if config.is_file():
        try:
            logger = OmegaConf.select(OmegaConf.load(config), "logger.name")
        except Exception:  # an unreadable config only makes the message less specific
            logger = None
    if logger in ("tensorboard", "wandb", "none"):
        return (
            f"it logged with logger.name={logger}, and bert-plot reads the csv logger's files: "
            "train with logger=csv (the default)"
        )
    return "give a bert-pretrain run directory trained with logger=csv (the default)"


def legend_names(runs: list[RunCurves], dirs: list[Path]) -> None:
    """Name runs whose directories share a name by their parent too (a/demo, b/demo)."""
    names = [r.name for r in runs]
    for run, path in zip(runs, dirs, strict=True):
        if names.count(run.name) > 1:
            resolved = path.resolve()
            run.name = f"{resolved.parent.name}/{resolved.name}"


# ---------------------------------------------------------------- drawing


def figure_class():
    """matplotlib's `Figure` (drawn without pyplot, so no display is needed); a one-line error
    when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            f"bert-plot draws with matplotlib, which is not installed: {PLOTS_HINT}"
        ) from None
    return Figure


def smoothed(values: list[float]) -> list[float]:
    """An exponential moving average over ~1/25 of the points (bias-corrected at the start, as
    TensorBoard's), so a noisy per-step curve shows its trend; short series are returned as is."""
    if len(values) < 20:
        return values
    alpha = 2 / (max(2, len(values) // 25) + 1)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


# (panel title, per-step training metric, held-out metric)
PANELS = (
    ("training loss (MLM + NSP)", "train/loss", "val/loss"),
    ("MLM accuracy (masked tokens)", "train/mlm_acc", "val/mlm_acc"),
    ("NSP accuracy", "train/nsp_acc", "val/nsp_acc"),
    ("learning rate", "train/lr", None),
    ("tokens / s", "train/tokens_per_sec", None),
    ("gradient norm (before clipping)", "train/grad_norm", None),
)
SMOOTHED = {"train/loss", "train/mlm_acc", "train/nsp_acc", "train/grad_norm"}
"""Per-step values noisy enough to be drawn thin, with their moving average thick."""


def draw_curves(runs: list[RunCurves], path: Path, dpi: int = 120) -> Path:
    """The six panels of `runs` into `path` (format from its suffix)."""
    Figure = figure_class()
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(15, 8.4), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (title, train_key, held_key) in zip(axes, PANELS, strict=True):
        drawn = False
        for i, run in enumerate(runs):
            color = f"C{i % 10}"
            series = run.metrics.get(train_key, [])
            if series:
                steps, values = zip(*series, strict=True)
                if train_key in SMOOTHED and len(values) >= 20:
                    ax.plot(steps, values, color=color, linewidth=0.7, alpha=0.3)
                    ax.plot(steps, smoothed(list(values)), color=color, linewidth=1.6)
                else:
                    ax.plot(steps, values, color=color, linewidth=1.4)
                drawn = True
            held = run.metrics.get(held_key, []) if held_key else []
            if held:
                periodic = [(s, v) for s, v in held if s != run.final_step]
                final = [(s, v) for s, v in held if s == run.final_step]
                if periodic:
                    ax.plot(
                        *zip(*periodic, strict=True),
                        color=color,
                        linestyle="--",
                        linewidth=0.9,
                        marker="o",
                        markersize=5,
                        markeredgecolor="white",
                        markeredgewidth=0.8,
                    )
                if final:
                    ax.plot(
                        *zip(*final, strict=True),
                        color=color,
                        linestyle="none",
                        marker="*",
                        markersize=14,
                        markeredgecolor="black",
                        markeredgewidth=0.6,
                    )
                drawn = True
            baseline = run.metrics.get("val/mlm_acc_baseline", [])
            if train_key == "train/mlm_acc" and baseline:
                ax.plot(*zip(*baseline, strict=True), color=color, linestyle=":", linewidth=1.2)
        if train_key == "train/nsp_acc" and drawn:
            ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1.0)
            ax.annotate(
                "chance",
                (0.01, 0.5),
                xycoords=("axes fraction", "data"),
                color="0.4",
                fontsize=8,
                va="bottom",
            )
        if train_key == "train/mlm_acc" and any(
            r.metrics.get("val/mlm_acc_baseline") for r in runs
        ):
            ax.annotate(
                "dotted: most-frequent-token baseline",
                (0.01, 0.99),
                xycoords="axes fraction",
                color="0.4",
                fontsize=8,
                va="top",
            )
        ax.set_title(title, fontsize=11)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(
                0.5,
                0.5,
                f"not logged\n({train_key})",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.5",
            )
            continue
        if train_key == "train/lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes[3:]:
        ax.set_xlabel("optimizer step")
    handles = [
        Line2D([], [], color=f"C{i % 10}", linewidth=2, label=r.name) for i, r in enumerate(runs)
    ]
    handles += [
        Line2D(
            [],
            [],
            color="0.3",
            linewidth=1.6,
            label="training (thin: each logged step, thick: moving average)",
        ),
        Line2D(
            [],
            [],
            color="0.3",
            linestyle="--",
            marker="o",
            markeredgecolor="white",
            label="held-out (periodic validation)",
        ),
        Line2D(
            [],
            [],
            color="0.3",
            linestyle="none",
            marker="*",
            markersize=12,
            markeredgecolor="black",
            label="held-out, final (whole validation split)",
        ),
    ]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=len(handles) if len(handles) <= 6 else 4,
        frameon=False,
        fontsize=9,
    )
    fig.savefig(path, format=path.suffix[1:].lower(), dpi=dpi)
    return path


def output_path(output: str | None, runs: list[str]) -> Path:
    """Where the figure goes: `output`, else `curves.png` in the one run directory (several runs:
    here); refused when its format is unknown or its directory is missing."""
    path = Path(output) if output else (Path(runs[0]) if len(runs) == 1 else Path()) / CURVES
    fmt = path.suffix[1:].lower()
    if fmt not in FORMATS:
        raise UserError(
            f"output={path}: unknown extension {path.suffix!r}; use "
            f"{', '.join('.' + f for f in FORMATS)}"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if output and not parent.is_dir():
        raise UserError(
            f"output={path}: directory {parent} does not exist; create it or write elsewhere"
        )
    return path


def plot(cfg: PlotConfig) -> Path:
    """Everything `bert-plot` does, callable in-process: returns the figure written."""
    if not cfg.run:
        raise UserError("run= is empty; give a run directory: bert-plot run=work/runs/demo")
    figure_class()  # a missing matplotlib is reported before anything is read
    path = output_path(cfg.output, cfg.run)
    runs = [read_run(r) for r in cfg.run]
    legend_names(runs, [Path(r) for r in cfg.run])
    return draw_curves(runs, path, cfg.dpi)


def draw_after_training(run_dir: Path) -> Path | None:
    """End of `bert-pretrain` (rank 0): `curves.png` in the finished run's directory. Never raises:
    without matplotlib or CSV metrics it says why in one line, and any drawing failure is reported
    the same way, since a finished training run must not fail over its figure."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            f"training curves not drawn: matplotlib is not installed ({PLOTS_HINT}, then bert-plot)"
        )
        return None
    if not any(Path(run_dir).glob(METRICS_GLOB)):
        print("training curves not drawn: the run has no CSV metrics (logger=csv writes them)")
        return None
    try:
        path = draw_curves([read_run(run_dir)], Path(run_dir) / CURVES)
    except Exception as err:  # see the docstring
        print(f"training curves not drawn: {type(err).__name__}: {err}")
        return None
    print(f"training curves: {path}")
    return path


# ---------------------------------------------------------------- command line


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="plot")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run"):
        raise UserError("run= is required: bert-plot run=work/runs/demo (or run=[A,B])")
    config = to_schema(cfg, PlotConfig)  # unknown keys and bad values: one line
    path = plot(config)
    print(f"wrote {path} ({math.ceil(path.stat().st_size / 1024)} KiB)")


def command_line(args: list[str]) -> list[str]:
    """`run=DIR` -> `run=[DIR]` (the field is a list, for overlays); `run=[A,B]` as given."""
    return [
        f"run=[{a[4:]}]" if a.startswith("run=") and not a[4:].startswith("[") else a for a in args
    ]


def main() -> None:
    """`bert-plot`."""
    sys.argv[1:] = command_line(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
