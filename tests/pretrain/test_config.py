"""bert-pretrain's typed config: every shipped option composes and validates; bad values fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

from pretrain.config import PretrainConfig, register_configs, resolve_runtime, to_typed
from pretrain.errors import UserError
from pretrain.model import PRESETS
from pretrain.run_dir import sweep_run_dir, sweep_subdir

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "data", "optim", "schedule", "trainer", "strategy", "logger", "experiment")

register_configs()


def load(*overrides: str) -> PretrainConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_typed(compose("pretrain", overrides=list(overrides)))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_shipped_option_composes_and_validates(group, option):
    cfg = load(f"{group}={option}")
    assert isinstance(cfg, PretrainConfig)


def test_model_yaml_matches_the_presets_in_code():
    assert set(options("model")) == set(PRESETS)
    for name, sizes in PRESETS.items():  # bert-base's sizes are BertConfig's defaults
        assert {k: getattr(load(f"model={name}").model, k) for k in sizes} == sizes


def test_run_dir_is_deterministic_and_named():
    cfg = load("experiment=demo")
    assert cfg.run_dir == "work/runs/demo"
    assert load("name=abc", "work_dir=/tmp/w").run_dir == "/tmp/w/runs/abc"


@pytest.mark.parametrize(
    "override,field",
    [
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("data.global_batch_size=100", "data.global_batch_size"),
        ("optim.lr=-1", "optim.lr"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("schedule.warmup_steps=20000", "warm-up"),
        ("model.num_heads=5", "num_heads"),
        ("logger.name=tensorboardx", "logger.name"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        load(override)


def test_unknown_key_and_unknown_preset_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match=r"trainer\.max_stepz"):
        load("trainer.max_stepz=3")
    with pytest.raises(ConfigCompositionException, match="bert-huge"):
        load("model=bert-huge")


APPS = ("pretrain", "finetune", "prep", "tokenizer", "export")


def app_groups(app: str) -> list[tuple[str, bool]]:
    """(group, optional) for every config group in the defaults list of `conf/<app>.yaml`."""
    found = []
    for entry in OmegaConf.load(CONF / f"{app}.yaml").get("defaults", []):
        if isinstance(entry, DictConfig):
            (key,) = entry.keys()
            group = key.removeprefix("optional ").strip()
            if not group.startswith(("override ", "hydra/")):
                found.append((group, key.startswith("optional ")))
    return found


@pytest.mark.parametrize("app,group", [(a, g) for a in APPS for g, _ in app_groups(a)])
def test_a_mistyped_option_of_any_app_group_fails_and_lists_the_options(app, group):
    """`optional` in a defaults list would make `experiment=nosuch` silently run the defaults."""
    assert (group, True) not in app_groups(app)
    import data_prep.config  # noqa: F401  (registers the prep and tokenizer schemas)
    import pretrain.finetune.app  # noqa: F401  (registers finetune_schema)

    with (
        initialize_config_dir(config_dir=str(CONF), version_base="1.3"),
        pytest.raises(ConfigCompositionException) as err,
    ):
        compose(app, overrides=[f"{group}=nosuch"])
    message = str(err.value)
    assert f"Could not find '{group}/nosuch'" in message
    assert all(o in message for o in options(group))  # "Available options in ..."


def test_mistyped_experiment_fails_instead_of_running_the_defaults():
    with pytest.raises(ConfigCompositionException, match=r"experiment/nosuch(.|\n)*debug"):
        load("experiment=nosuch")
    assert load().name == "default"  # no experiment is still fine


def load_job(*overrides: str, mode: str = "MULTIRUN") -> PretrainConfig:
    """As one job of `bert-pretrain -m ...` with these (already expanded) overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "pretrain", overrides=[*overrides, f"hydra.mode={mode}"], return_hydra_config=True
        )
    with open_dict(cfg):
        hydra_cfg = cfg.pop("hydra")
    sweep_run_dir(cfg, hydra_cfg)
    return to_typed(cfg)


def test_each_sweep_job_gets_its_own_readable_and_stable_run_dir():
    one = load_job("experiment=debug", "optim.lr=1e-3", "trainer.max_steps=5")
    two = load_job("experiment=debug", "optim.lr=3e-3", "trainer.max_steps=5")
    assert one.run_dir == "work/runs/debug/experiment=debug,optim.lr=1e-3,trainer.max_steps=5"
    assert two.run_dir == "work/runs/debug/experiment=debug,optim.lr=3e-3,trainer.max_steps=5"
    # The same job of a re-run sweep, overrides in another order: the same directory.
    again = load_job("trainer.max_steps=5", "optim.lr=1e-3", "experiment=debug")
    assert again.run_dir == one.run_dir
    # What places or steers the launch does not name it; paths become one safe component.
    placed = load_job("name=x", "work_dir=/w", "resume=never", "data.dir=/d/seq128", "seed=2")
    assert placed.run_dir == "/w/runs/x/data.dir=_d_seq128,seed=2"
    assert load_job("name=x").run_dir == "work/runs/x"  # nothing left: the plain run directory


def test_a_run_dir_set_by_the_user_or_a_single_run_is_left_alone():
    assert load_job("run_dir=/r", "optim.lr=1e-3").run_dir == "/r"
    assert load_job("optim.lr=1e-3", mode="RUN").run_dir == "work/runs/default"
    interpolated = load_job("run_dir=${work_dir}/lr${optim.lr}", "optim.lr=1e-3")
    assert interpolated.run_dir == "work/lr0.001"


def test_long_sweep_subdirs_are_cut_with_a_hash():
    long = ",".join(f"model.key{i}=value{i}" for i in range(30))
    sub = sweep_subdir(long)
    assert (
        len(sub) == 120 and sub.startswith("model.key0=value0,") and sub != sweep_subdir(long + "x")
    )
    assert sweep_subdir(long) == sub


def write_prepared_dir(root: Path, vocab_size: int = 120, max_len: int = 64) -> Path:
    """A minimal `bert-prep` output: manifest + tokenizer files, enough for resolve_runtime."""
    import hashlib

    tok = root / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "tokenizer.json").write_text('{"fake": true}')
    (tok / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(vocab_size)))
    sha = hashlib.sha256((tok / "tokenizer.json").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "max_seq_length": max_len,
                "tokenizer": {"sha256": sha, "vocab_size": vocab_size},
                "special_token_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
            }
        )
    )
    return root


def test_resolve_runtime_fills_vocab_and_derives_accumulation(tmp_path):
    data = write_prepared_dir(tmp_path / "d")
    cfg = load(
        f"data.dir={data}",
        "data.global_batch_size=64",
        "data.micro_batch_size=8",
        "model=bert-tiny",
    )
    rt = resolve_runtime(cfg, world_size=2)
    assert cfg.model.vocab_size == 120
    assert rt.accumulate_grad_batches == 4
    assert rt.tokenizer_dir == data / "tokenizer"


def test_resolve_runtime_errors_name_the_problem(tmp_path):
    data = write_prepared_dir(tmp_path / "d")
    with pytest.raises(UserError, match=r"model\.vocab_size=999"):
        resolve_runtime(load(f"data.dir={data}", "model.vocab_size=999"), 1)
    with pytest.raises(UserError, match=r"micro_batch_size × world size = 32 × 3"):
        resolve_runtime(
            load(f"data.dir={data}", "data.global_batch_size=64", "data.micro_batch_size=32"), 3
        )
    with pytest.raises(UserError, match="bert-prep"):
        resolve_runtime(load(f"data.dir={tmp_path / 'nothing'}"), 1)
    other = tmp_path / "other_tok"
    other.mkdir()
    (other / "tokenizer.json").write_text('{"other": true}')
    with pytest.raises(UserError, match="is not the one"):
        resolve_runtime(load(f"data.dir={data}", f"data.tokenizer_dir={other}"), 1)
    with pytest.raises(UserError, match="max_position_embeddings"):
        resolve_runtime(load(f"data.dir={data}", "model.max_position_embeddings=32"), 1)


@pytest.mark.parametrize("size", ["base", "large"])
def test_two_phase_presets_follow_the_recipe(size):
    """NVIDIA's two-phase recipe in spirit: 128 then 512 tokens, ~9:1 samples, phase 2 starting
    from phase 1's weights (init_from: weights only, so a fresh optimizer state and warm-up)."""
    one, two = load(f"experiment=bert_{size}_phase1"), load(f"experiment=bert_{size}_phase2")
    arch = PRESETS[f"bert-{size}"]
    for cfg in (one, two):
        assert {k: getattr(cfg.model, k) for k in arch} == arch
        assert cfg.schedule.name == "polynomial" and cfg.schedule.power == 0.5
        assert cfg.init_from != cfg.run_dir and cfg.resume == "auto"
    assert one.data.dir.endswith("seq128") and two.data.dir.endswith("seq512")
    assert two.model.max_position_embeddings >= 512
    assert one.init_from is None and two.init_from == one.run_dir
    assert (one.data.global_batch_size, two.data.global_batch_size) == (65536, 32768)
    samples = [c.data.global_batch_size * c.trainer.max_steps for c in (one, two)]
    assert 8.5 < samples[0] / samples[1] < 9.5  # 90% / 10% of the samples
    assert (one.schedule.warmup_fraction, two.schedule.warmup_fraction) == (0.2843, 0.128)
    assert (one.data.masking.max_predictions_per_seq, two.data.masking.max_predictions_per_seq) == (
        20,
        80,
    )
    assert one.optim.name == two.optim.name == "lamb"  # what makes these rates stable
    assert (one.optim.lr, two.optim.lr) == (6e-3, 4e-3)
    # The global batch splits evenly on 1 to 32 nodes of 8 GPUs (accumulation is derived).
    for cfg in (one, two):
        for gpus in (8, 16, 32, 64, 128, 256):
            assert cfg.data.global_batch_size % (cfg.data.micro_batch_size * gpus) == 0


def test_cpu_budget_phases_chain_and_fit_the_hour():
    """Short sequences first (the lever that leaves the unigram plateau), then full length from
    phase 1's weights, then the tasks' unlabelled text from phase 2's; the same model throughout,
    and the three budgets within the recipe's 60-minute pretraining budget."""
    one, two, three = (load(f"experiment=cpu_budget_phase{i}") for i in (1, 2, 3))
    assert one.data.dir.endswith("seq32") and two.data.dir.endswith("seq128")
    assert three.data.dir.endswith("task_text-seq64")
    assert one.init_from is None and two.init_from == one.run_dir and three.init_from == two.run_dir
    assert one.model == two.model == three.model
    assert one.model.norm_position == "pre" and one.model.hidden_dropout == 0.0
    # The same token slots per step in every phase: 256 × 32 = 64 × 128 = 128 × 64.
    slots = {p.data.global_batch_size * n for p, n in ((one, 32), (two, 128), (three, 64))}
    assert slots == {8192}
    assert {p.data.val_mlm_probability for p in (one, two, three)} == {0.15}
    assert sum(p.trainer.max_time_minutes for p in (one, two, three)) <= 60
