"""What `pip install` gives a user: pyproject.toml ships every package and the YAML configs, states
the Lightning / DeepSpeed range that pretrain/versions.py enforces at start, and a wheel installed
in a fresh virtual environment runs the apps from any directory, away from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pretrain.errors import UserError
from pretrain.versions import ALLOW_ENV, TESTED, check_versions
from tests.data_prep.dp_helpers import stdlib_documents, write_txt

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrain", "data_prep")  # top-level packages of the distribution


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_pyproject_lists_every_package_and_ships_conf_inside_pretrain():
    """The package list is explicit (conf/ maps to `pretrain.conf`, which find would not see), so a
    new sub-package must be added to it."""
    setuptools = pyproject()["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in PACKAGES
        for init in (REPO / top).rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == found | {"pretrain.conf"}
    assert setuptools["package-dir"] == {"pretrain.conf": "conf"}
    patterns = setuptools["package-data"]["pretrain.conf"]
    assert all(any(p.match(pat) for pat in patterns) for p in (REPO / "conf").rglob("*.yaml"))


def test_dependency_bounds_are_the_range_the_start_check_enforces():
    specs = {}
    for dep in pyproject()["project"]["dependencies"]:
        name = dep.split(">")[0].split("<")[0].split("=")[0].strip()
        specs[name] = dep[len(name) :].strip()
    assert {name: specs[name] for name in TESTED} == TESTED
    assert all("<" in spec for spec in TESTED.values())  # an upper bound: the next minor version


def test_installed_versions_pass_the_check(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    check_versions()


def test_untested_versions_stop_with_one_line_unless_allowed(monkeypatch, capsys):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(UserError) as err:
        check_versions({"lightning": "2.7.0", "deepspeed": "0.19.8"})
    message = str(err.value)
    assert "\n" not in message
    assert "lightning 2.7.0 is outside" in message and "deepspeed 0.19" not in message
    assert "pip install 'lightning>=2.4,<2.7'" in message and f"{ALLOW_ENV}=1" in message
    with pytest.raises(UserError, match=r"lightning 2\.3\.3 and deepspeed 0\.20\.0 are outside"):
        check_versions({"lightning": "2.3.3", "deepspeed": "0.20.0"})
    check_versions({"lightning": "2.6.6", "deepspeed": None})  # not installed: nothing to check

    monkeypatch.setenv(ALLOW_ENV, "1")
    check_versions({"lightning": "2.7.0", "deepspeed": "0.19.8"})
    assert f"proceeding because {ALLOW_ENV} is set" in capsys.readouterr().err
    monkeypatch.setenv(ALLOW_ENV, "0")  # 0 does not allow
    with pytest.raises(UserError):
        check_versions({"lightning": "2.7.0", "deepspeed": "0.19.8"})


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH (nothing points at the checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", ALLOW_ENV)}
    env.update(TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1", **extra)
    return env


def run(cmd: list, cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.e2e
def test_pretraining_checks_versions_at_start(tmp_path):
    """The app runs the check: a (fake) lightning 2.7.0 earlier on the path stops bert-pretrain with
    the one line, before it reads any data; the variable lets it go on to the next fault."""
    fake = tmp_path / "fake" / "lightning-2.7.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: lightning\nVersion: 2.7.0\n")
    env = clean_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), str(REPO)]))
    cmd = [sys.executable, "-m", "pretrain.train", "experiment=debug", f"work_dir={tmp_path}",
           f"data.dir={tmp_path / 'no_data'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: lightning 2.7.0 is outside the versions bert-pretrain is tested")
    allowed = subprocess.run(
        cmd, cwd=tmp_path, env={**env, ALLOW_ENV: "1"}, capture_output=True, text=True, timeout=300
    )
    assert allowed.returncode == 2 and "lightning 2.7.0" in allowed.stderr
    assert "no_data" in allowed.stderr.splitlines()[-1]  # got past the check, to the data


@pytest.mark.e2e
def test_the_wheel_runs_the_apps_outside_the_checkout(tmp_path):
    """Build the wheel from a copy of what it is made of, install it (no dependencies: torch etc.
    come from this interpreter's site-packages) into a fresh virtual environment, and run
    bert-tokenizer, bert-prep and bert-pretrain from an empty directory, one of them with a user
    experiment from --config-dir."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        src.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    for name in ("conf", *PACKAGES):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = clean_env()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp_path / "dist", "."], cwd=src, env=env)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("bert_pretrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "conf").rglob("*.yaml"):
        assert f"pretrain/conf/{path.relative_to(REPO / 'conf').as_posix()}" in names
    for top in PACKAGES:
        for path in (REPO / top).rglob("*.py"):
            assert path.relative_to(REPO).as_posix() in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
        cwd=tmp_path, env=env)  # fmt: skip
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    # pip from the base interpreter's site-packages, installing into the venv; --ignore-installed
    # leaves the checkout's editable install in the base site-packages alone.
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
         wheel], cwd=tmp_path, env=env)  # fmt: skip

    home = tmp_path / "empty"
    home.mkdir()
    where = run([python, "-c", "import sysconfig, pretrain, data_prep; "
                 "from pretrain.config_path import CONF_DIR; "
                 "print(sysconfig.get_paths()['purelib']); print(pretrain.__file__); "
                 "print(data_prep.__file__); print(CONF_DIR)"], cwd=home, env=env).split("\n")  # fmt: skip
    site = Path(where[0]).resolve()
    assert site.is_relative_to(venv.resolve())
    for found in where[1:4]:  # the venv's copy wins over the editable install's finder
        assert Path(found).resolve().is_relative_to(site), where
    assert Path(where[3]) == site / "pretrain" / "conf"

    write_txt(home / "corpus" / "docs.txt", stdlib_documents())
    corpus = ["corpus=files", "corpus.name=english", "corpus.paths=[corpus/docs.txt]"]
    run([bin_dir / "bert-tokenizer", *corpus, "vocab_size=1000"], cwd=home, env=env)
    assert (home / "work" / "tokenizers" / "english" / "tokenizer.json").is_file()
    run([bin_dir / "bert-prep", *corpus, "max_seq_length=64", "dupe_factor=1", "num_proc=1"],
        cwd=home, env=env)  # fmt: skip
    assert (home / "work" / "data" / "english-seq64" / "manifest.json").is_file()

    mine = home / "my_conf" / "experiment" / "wheel.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text(
        "# @package _global_\ndefaults:\n  - debug\n  - _self_\n\nname: wheel\n"
        "data:\n  dir: ${work_dir}/data/english-seq64\n",
        encoding="utf-8",
    )
    out = run([bin_dir / "bert-pretrain", "--config-dir", "my_conf", "experiment=wheel",
               "trainer.max_steps=2", "trainer.val_check_interval=2",
               "trainer.checkpoint_every_n_steps=2", "trainer.limit_val_batches=1"],
              cwd=home, env=env)  # fmt: skip
    assert "pretraining finished at step 2" in out
    run_dir = home / "work" / "runs" / "wheel"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert str(site / "pretrain" / "conf") in (run_dir / ".hydra" / "hydra.yaml").read_text()
