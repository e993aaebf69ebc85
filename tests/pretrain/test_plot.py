"""`bert-plot` and the end of training's `curves.png`, from a real 6-step run's CSV metrics: the
figure written (a PNG of the expected size), several runs overlaid, a resumed run's launches
merged, and every user error in one line (matplotlib missing included)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.errors import UserError
from pretrain.plot import CURVES, PlotConfig, command_line, legend_names, plot, read_run
from tests.conftest import REPO
from tests.pretrain_runs import pretrain

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def run(prepared_english, tmp_path_factory) -> tuple[Path, str]:
    """A finished 6-step run (held-out evaluations at steps 3 and 6, every step logged) and what
    it printed."""
    work = tmp_path_factory.mktemp("plot_run")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = pretrain(env, work, prepared_english, "name=curves", "trainer.max_steps=6",
                    "trainer.val_check_interval=3")  # fmt: skip
    return work / "runs" / "curves", proc.stdout


def test_training_ends_by_drawing_its_curves(run):
    run_dir, stdout = run
    assert f"training curves: {run_dir / CURVES}" in stdout
    assert png_size(run_dir / CURVES) == (1800, 1008)  # 15 × 8.4 in at 120 dpi
    assert 20_000 < (run_dir / CURVES).stat().st_size < 2_000_000


def test_the_runs_logs_are_read_back(run):
    curves = read_run(run[0])
    assert [s for s, _ in curves.metrics["train/loss"]] == list(range(6))
    for key in ("train/mlm_acc", "train/nsp_acc", "train/lr", "train/tokens_per_sec"):
        assert curves.metrics[key], key
    # periodic validations, then the final one on the whole split at the step summary.json names
    held = [s for s, _ in curves.metrics["val/mlm_acc"]]
    assert curves.final_step == 6 and held[-1] == 6 and len(held) >= 2


def test_bert_plot_writes_the_figure_where_asked(run, tmp_path):
    out = plot(PlotConfig(run=[str(run[0])], output=str(tmp_path / "c.svg")))
    assert out == tmp_path / "c.svg" and out.read_text().lstrip().startswith("<?xml")
    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    (copy / CURVES).unlink()
    assert plot(PlotConfig(run=[str(copy)])) == copy / CURVES  # default: in the run directory
    assert png_size(copy / CURVES) == (1800, 1008)


def test_several_runs_overlay_and_are_named_apart(run, tmp_path, monkeypatch):
    for parent in ("a", "b"):
        shutil.copytree(run[0], tmp_path / parent / "curves")
    dirs = [tmp_path / "a" / "curves", tmp_path / "b" / "curves"]
    runs = [read_run(d) for d in dirs]
    legend_names(runs, dirs)
    assert [r.name for r in runs] == ["a/curves", "b/curves"]
    monkeypatch.chdir(tmp_path)
    out = plot(PlotConfig(run=[str(d) for d in dirs], dpi=60))
    assert out == Path(CURVES) and png_size(tmp_path / CURVES) == (900, 504)


def test_a_resumed_runs_later_launch_replaces_the_steps_it_repeats(tmp_path):
    header = "epoch,step,train/loss,val/mlm_acc\n"
    for version, rows in (
        ("0", "0,1,5.0,\n0,2,4.0,\n0,3,3.5,\n"),
        ("1", "0,3,3.0,\n0,4,2.5,0.2\n"),
    ):
        (tmp_path / "csv" / f"version_{version}").mkdir(parents=True)
        (tmp_path / "csv" / f"version_{version}" / "metrics.csv").write_text(header + rows)
    curves = read_run(tmp_path)
    assert curves.metrics["train/loss"] == [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.5)]
    assert curves.metrics["val/mlm_acc"] == [(4, 0.2)] and curves.final_step is None


def test_errors_are_one_line(run, tmp_path):
    def refused(cfg: PlotConfig, *says: str) -> None:
        with pytest.raises(UserError) as err:
            plot(cfg)
        message = str(err.value)
        assert "\n" not in message and all(s in message for s in says), message

    refused(PlotConfig(run=[str(tmp_path / "nope")]), "nope does not exist", "work/runs/demo")
    (tmp_path / "file").write_text("x")
    refused(PlotConfig(run=[str(tmp_path / "file")]), "is a file")
    tensorboard = tmp_path / "tb"
    tensorboard.mkdir()
    (tensorboard / "config.yaml").write_text("logger:\n  name: tensorboard\n")
    refused(PlotConfig(run=[str(tensorboard)]), "no CSV metrics", "logger.name=tensorboard",
            "logger=csv")  # fmt: skip
    early = tmp_path / "early" / "csv" / "version_0"
    early.mkdir(parents=True)
    (early / "metrics.csv").write_text("epoch,step,val/mlm_acc\n0,3,0.1\n")
    refused(PlotConfig(run=[str(early.parents[1])]), "no training loss", "log_every_n_steps")
    refused(PlotConfig(run=[str(run[0])], output=str(tmp_path / "c.jpg")),
            "unknown extension '.jpg'", ".png")  # fmt: skip
    refused(PlotConfig(run=[str(run[0])], output=str(tmp_path / "no" / "c.png")),
            "directory", "does not exist")  # fmt: skip
    refused(PlotConfig(run=[]), "run= is empty")


def test_command_line_takes_one_run_or_a_list():
    assert command_line(["run=work/runs/a", "output=x.png"]) == [
        "run=[work/runs/a]",
        "output=x.png",
    ]
    assert command_line(["run=[a,b]"]) == ["run=[a,b]"]


def test_without_matplotlib_training_skips_the_figure_and_bert_plot_says_how_to_install(
    run, tmp_path
):
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    (copy / CURVES).unlink()
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # `import matplotlib` raises ImportError\n"
        "from pathlib import Path\n"
        "from pretrain.plot import draw_after_training, main\n"
        f"assert draw_after_training(Path({str(copy)!r})) is None\n"
        f"sys.argv = ['bert-plot', 'run={copy}']\n"
        "main()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == (
        "training curves not drawn: matplotlib is not installed "
        "(pip install 'bert-pretrain[plots]', then bert-plot)"
    )
    assert proc.stderr.strip() == (
        "error: bert-plot draws with matplotlib, which is not installed: "
        "pip install 'bert-pretrain[plots]'"
    )
    assert not (copy / CURVES).exists()
