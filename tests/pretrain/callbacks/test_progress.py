"""Progress output: plain periodic lines in batch jobs (no carriage returns), a rich bar with
steps, tokens/s and the ETA in a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def command(work, data) -> list[str]:
    return [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={work}",
            f"data.dir={data}", "name=progress", "trainer.max_steps=6",
            "trainer.log_every_n_steps=2", "trainer.val_check_interval=6"]  # fmt: skip


def test_batch_job_output_has_plain_lines_and_no_carriage_returns(
    prepared_english, tmp_path, app_env
):
    # stdout is a pipe, as in a SLURM job's output file; the bar is enabled in the config.
    proc = subprocess.run([*command(tmp_path, prepared_english), "trainer.enable_progress_bar=true"],
                          env=app_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "\r" not in output
    lines = re.findall(r"^.*step (\d)/6  loss \d+\.\d{4}  [\d,]+ tokens/s  .*eta \d+:\d\d:\d\d$",
                       output, flags=re.M)  # fmt: skip
    assert lines == ["2", "4", "6"], output[-3000:]


def test_terminal_gets_a_rich_bar_with_steps_tokens_per_second_and_eta(
    prepared_english, tmp_path, app_env
):
    controller, terminal = pty.openpty()
    env = dict(app_env, COLUMNS="160", LINES="40", TERM="xterm")
    proc = subprocess.Popen(command(tmp_path, prepared_english), env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)  # fmt: skip
    os.close(terminal)
    chunks = []
    while True:  # drain the terminal until the process closes it (EIO), or it would block
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert proc.wait(timeout=300) == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "pretraining" in screen and "6/6" in screen, screen[-3000:]
    assert re.search(r"tokens/s:? [\d,]+", screen), screen[-3000:]
    assert re.search(r"\d+:\d\d:\d\d • \d+:\d\d:\d\d", screen)  # elapsed • remaining
    assert not re.search(r"step \d/6  loss", screen)  # the plain lines are for batch jobs only
