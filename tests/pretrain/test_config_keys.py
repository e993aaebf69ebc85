"""`+key=value` for a key the schema lacks is refused by every app, naming the key (Hydra adds it
under open_dict, and OmegaConf.to_object would otherwise drop it without a word)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import pretrain.export  # noqa: F401  (registers export_schema)
from data_prep.config import PrepAppConfig, TokenizerAppConfig, to_object
from data_prep.config import compose as prep_compose
from pretrain.config import register_configs, to_typed
from pretrain.config_keys import check_known_keys
from pretrain.errors import UserError
from pretrain.export import ExportConfig
from pretrain.finetune.config import register_configs as register_finetune_configs
from pretrain.finetune.config import to_typed as finetune_to_typed

CONF = Path(__file__).resolve().parents[2] / "conf"

register_configs()
register_finetune_configs()


def composed(app: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(app, overrides=list(overrides))


def test_pretrain_refuses_an_added_unknown_key_naming_it_and_the_fields():
    with pytest.raises(UserError) as err:
        to_typed(composed("pretrain", "+trainer.max_stepz=5"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown config key trainer.max_stepz (not in the schema")
    assert "did you mean trainer.max_steps?" in message
    assert "trainer has: max_steps, accelerator," in message


@pytest.mark.parametrize(
    "override,key",
    [
        ("+nmae=x", "nmae"),  # top level
        ("+data.masking.mlm_probabilty=0.2", "data.masking.mlm_probabilty"),  # two levels down
        ("+foo.bar=1", "foo"),  # a whole unknown subtree is named by its root
    ],
)
def test_pretrain_refuses_unknown_keys_at_any_depth(override, key):
    with pytest.raises(UserError, match=f"unknown config key {re.escape(key)} "):
        to_typed(composed("pretrain", override))


def test_several_unknown_keys_are_named_together():
    with pytest.raises(
        UserError, match=r"unknown config keys .*optim\.lrr \(did you mean optim\.lr"
    ):
        to_typed(composed("pretrain", "+optim.lrr=1", "+trainer.max_stepz=5"))


def test_mapping_fields_take_any_keys():
    cfg = to_typed(
        composed(
            "pretrain",
            "+eval_downstream.task_fields.train=a.csv",
            "+eval_downstream.task_fields.anything.nested=1",
        )
    )
    assert cfg.eval_downstream.task_fields == {"train": "a.csv", "anything": {"nested": 1}}


def test_finetune_refuses_an_added_unknown_key():
    base = ("task=sequence_classification", "task.name=x", "model_path=m")
    assert finetune_to_typed(composed("finetune", *base)).task.name == "x"
    with pytest.raises(
        UserError, match=r"unknown config key task\.max_seq_lenght .*max_seq_length"
    ):
        finetune_to_typed(composed("finetune", *base, "+task.max_seq_lenght=64"))


@pytest.mark.parametrize(
    "app,schema,override,key",
    [
        ("prep", PrepAppConfig, "+dupe_factr=3", "dupe_factor"),
        ("tokenizer", TokenizerAppConfig, "+corpus.max_document=3", "corpus.max_documents"),
    ],
)
def test_data_prep_apps_refuse_an_added_unknown_key(app, schema, override, key):
    with pytest.raises(UserError, match=f"did you mean {re.escape(key)}[?]"):
        to_object(prep_compose(app, [override]), schema)


def test_export_refuses_an_added_unknown_key():
    cfg = composed("export", "checkpoint=a", "output_dir=b")
    check_known_keys(cfg, ExportConfig)
    with pytest.raises(UserError, match=r"unknown config key output_dri .*output_dir\?"):
        check_known_keys(composed("export", "checkpoint=a", "output_dir=b", "+output_dri=c"),
                         ExportConfig)  # fmt: skip
