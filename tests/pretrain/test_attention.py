"""Attention probabilities of the model (parity with transformers' eager attention, the training
path untouched) and `bert-attention`: rollout, the figure, the HTML page and its one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from pretrain.attention_maps import AttentionConfig, attention_maps, attention_rollout
from pretrain.errors import UserError
from pretrain.model import BertForPreTraining, hf_config_kwargs, hf_state_dict_key_map
from tests.tiny_bert import batch, tiny


def peaked_model(**overrides) -> BertForPreTraining:
    """A seeded tiny model whose query and key weights are scaled up, so attention is far from
    uniform (freshly initialized BERT attends almost evenly, which would hide masking mistakes)."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny(**overrides)).eval()
    with torch.no_grad():
        for layer in model.bert.layers:
            layer.attention.query.weight.mul_(8)
            layer.attention.key.weight.mul_(8)
    return model


@pytest.mark.parametrize("fused_qkv", [True, False])
def test_attentions_equal_transformers_eager_attentions_with_padding(fused_qkv):
    transformers = pytest.importorskip("transformers")
    ours = peaked_model(fused_qkv=fused_qkv)
    cfg = ours.cfg
    hf = transformers.BertModel(
        transformers.BertConfig(**hf_config_kwargs(cfg), attn_implementation="eager")
    ).eval()
    key_map = hf_state_dict_key_map(cfg)
    encoder = {
        key_map[k].removeprefix("bert."): v
        for k, v in ours.state_dict().items()
        if key_map.get(k, "").startswith("bert.")
    }
    missing, unexpected = hf.load_state_dict(encoder, strict=False)
    assert missing == [] and unexpected == []

    b = batch()  # row 1 is padded from position 11
    with torch.no_grad():
        hidden, pooled, ours_attn = ours.bert(
            b["input_ids"], b["token_type_ids"], b["attention_mask"], output_attentions=True
        )
        theirs = hf(
            input_ids=b["input_ids"],
            token_type_ids=b["token_type_ids"],
            attention_mask=b["attention_mask"],
            output_attentions=True,
        )
    assert len(ours_attn) == cfg.num_layers == len(theirs.attentions)
    for layer, (a, h) in enumerate(zip(ours_attn, theirs.attentions, strict=True)):
        assert a.shape == (3, cfg.num_heads, 16, 16)
        torch.testing.assert_close(a, h, rtol=0, atol=1e-5, msg=f"layer {layer}")
        assert a[1, :, :, 11:].abs().max() == 0  # padded keys get no attention
        torch.testing.assert_close(a.sum(-1), torch.ones(3, cfg.num_heads, 16))
    assert ours_attn[0].max() > 0.5  # the scaled weights make some attention peak
    real = b["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], theirs.last_hidden_state[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, theirs.pooler_output, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fused_qkv", [True, False])
def test_forward_without_attentions_keeps_sdpa_and_its_exact_output(fused_qkv, monkeypatch):
    model = peaked_model(fused_qkv=fused_qkv)
    b = batch()
    args = (b["input_ids"], b["token_type_ids"], b["attention_mask"])
    with torch.no_grad():
        before = model(*args)

        calls = []
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def counting_sdpa(*a, **kw):
            calls.append(1)
            return sdpa(*a, **kw)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
        attentions = model.attentions(*args)
        assert calls == []  # the explicit softmax only when attentions are asked for
        hidden_with, _, _ = model.bert(*args, output_attentions=True)
        after = model(*args)
        assert len(calls) == model.cfg.num_layers  # the default forward still goes through SDPA
        explicit_false = model.bert(*args, output_attentions=False)
    assert len(attentions) == model.cfg.num_layers
    for got, want in zip(after, before, strict=True):
        assert torch.equal(got, want)  # bitwise: asking for attentions changed nothing
    assert len(explicit_false) == 2 and torch.equal(explicit_false[0], before.hidden_states)
    real = b["attention_mask"].bool()
    torch.testing.assert_close(hidden_with[real], before.hidden_states[real], rtol=0, atol=1e-5)


def test_rollout_of_a_two_layer_case_matches_the_hand_computation():
    # Layer 1: heads [[1, 0], [.5, .5]] and [[0, 1], [.5, .5]] average to all .5; with the
    # identity and renormalised rows: [[.75, .25], [.25, .75]].
    # Layer 2: both heads [[1, 0], [1, 0]]; + I, renormalised: [[1, 0], [.5, .5]].
    # Rollout after layer 2 = Â2 · Â1 = [[.75, .25], [.5·.75 + .5·.25, .5·.25 + .5·.75]].
    layer1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])
    layer2 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    rollout = attention_rollout(torch.stack([layer1, layer2]))
    assert rollout.shape == (2, 2, 2)
    torch.testing.assert_close(rollout[0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    torch.testing.assert_close(rollout[1], torch.tensor([[0.75, 0.25], [0.5, 0.5]]))


TEXT = "the quick brown fox jumps over the lazy dog"


def test_png_and_html_are_written(tiny_model, tmp_path):
    pytest.importorskip("matplotlib")
    png = attention_maps(
        AttentionConfig(model_path=str(tiny_model), text=TEXT, output=str(tmp_path / "a.png"))
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    page = attention_maps(
        AttentionConfig(
            model_path=str(tiny_model), text=TEXT, output=str(tmp_path / "a.out"), format="html"
        )
    ).read_text()
    assert page.startswith("<!DOCTYPE html>") and '"rollout"' in page and "[CLS]" in page
    assert not re.search(r"<script[^>]*\bsrc=", page)  # self-contained: nothing fetched
    assert not re.search(r"https?://", page)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(text=" ".join(["fox"] * 80)), "longer than the model's 64 positions"),
        (dict(text="  "), "text is empty"),
        (dict(output="missing_dir/a.png"), "does not exist"),
        (dict(format="gif"), "unknown format='gif'"),
        (dict(output="a.gif"), "unknown format 'gif'"),
    ],
)
def test_errors_are_one_line(tiny_model, tmp_path, overrides, message):
    fields = dict(model_path=str(tiny_model), text=TEXT, output=str(tmp_path / "a.html"))
    if "output" in overrides:
        overrides = {**overrides, "output": str(tmp_path / overrides["output"])}
    with pytest.raises(UserError, match=re.escape(message)) as err:
        attention_maps(AttentionConfig(**{**fields, **overrides}))
    assert "\n" not in str(err.value)


def test_missing_matplotlib_is_one_line_with_the_install_hint(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    cfg = AttentionConfig(model_path=str(tiny_model), text=TEXT, output=str(tmp_path / "a.png"))
    with pytest.raises(UserError, match=re.escape("pip install 'bert-pretrain[plots]'")):
        attention_maps(cfg)
    assert not (tmp_path / "a.png").exists()


def test_command_line(tiny_model, tmp_path, app_env):
    pytest.importorskip("matplotlib")
    cmd = [sys.executable, "-m", "pretrain.attention_maps", f"model={tiny_model}", f"text='{TEXT}'",
           "output=fig.png"]  # fmt: skip
    done = subprocess.run(
        cmd, env=app_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "wrote fig.png" in done.stdout and (tmp_path / "fig.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]  # no Hydra outputs
