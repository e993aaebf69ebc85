"""The plain-PyTorch BERT: shapes, gradients, masking semantics and parity with transformers."""

from __future__ import annotations

import pytest
import torch

from pretrain.model import (
    PRESETS,
    BertConfig,
    BertForPreTraining,
    hf_config_kwargs,
    hf_state_dict_key_map,
    preset,
    pretraining_loss,
)
from tests.tiny_bert import V, batch, tiny


def test_presets_are_valid_and_sized_like_google_bert():
    for name, sizes in PRESETS.items():
        cfg = preset(name, vocab_size=30522)
        assert cfg.hidden_size % cfg.num_heads == 0
        assert cfg.intermediate_size == 4 * cfg.hidden_size, name
        assert sizes["hidden_size"] // sizes["num_heads"] == 64, name
    n = BertForPreTraining(preset("bert-base", vocab_size=30522)).num_parameters()
    assert 109e6 < n < 111e6  # BERT-base with its pretraining heads: ~110 M


def test_unknown_preset_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="bert-huge"):
        preset("bert-huge")
    with pytest.raises(ValueError, match="num_heads"):
        BertConfig(vocab_size=10, hidden_size=130, num_heads=4)
    with pytest.raises(ValueError, match="hidden_dropout"):
        BertConfig(vocab_size=10, hidden_dropout=1.5)
    with pytest.raises(ValueError, match="vocab_size is unset"):
        BertForPreTraining(preset("bert-tiny"))


def test_shapes_and_backward():
    cfg = tiny(sparse_mlm=False)
    model = BertForPreTraining(cfg)
    b = batch()
    out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], mlm_labels=b["labels"])
    assert out.mlm_logits.shape == (3, 16, V)
    assert out.nsp_logits.shape == (3, 2)
    assert out.hidden_states.shape == (3, 16, cfg.hidden_size)
    assert out.pooled.shape == (3, cfg.hidden_size)
    loss, mlm, nsp = pretraining_loss(out, b["labels"], b["next_sentence_label"])
    assert torch.isclose(loss, mlm + nsp)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert unused == []


def test_decoder_is_tied_to_word_embeddings():
    model = BertForPreTraining(tiny())
    assert model.mlm.word_embeddings.weight is model.bert.embeddings.word.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))


def test_init_follows_bert():
    model = BertForPreTraining(preset("bert-mini", vocab_size=4000))
    w = model.bert.layers[0].ffn_in.weight
    assert abs(w.std().item() - 0.02) < 0.001
    assert model.bert.layers[0].ffn_in.bias.abs().sum() == 0
    assert torch.all(model.bert.layers[0].attention_norm.weight == 1)
    assert model.bert.embeddings.word.weight[0].abs().sum() == 0  # padding row


def test_sparse_mlm_gives_the_same_loss_and_gradients_as_dense():
    b = batch()
    results = []
    for sparse in (False, True):
        torch.manual_seed(0)
        model = BertForPreTraining(tiny(sparse_mlm=sparse)).eval()
        out = model(
            b["input_ids"], b["token_type_ids"], b["attention_mask"], mlm_labels=b["labels"]
        )
        loss = pretraining_loss(out, b["labels"], b["next_sentence_label"])[0]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (dense_loss, dense_grads), (sparse_loss, sparse_grads) = results
    assert (sparse_loss - dense_loss).abs() < 1e-6
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_padding_does_not_change_real_token_outputs():
    model = BertForPreTraining(tiny()).eval()
    b = batch()
    hidden, _ = model.bert(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    # The same padded row with different garbage in the padding gives the same real-token outputs.
    ids = b["input_ids"].clone()
    ids[1, 11:] = 7
    hidden2, _ = model.bert(ids, b["token_type_ids"], b["attention_mask"])
    torch.testing.assert_close(hidden[1, :11], hidden2[1, :11])
    # And equals the row run alone, unpadded (the mask-free path).
    alone, _ = model.bert(
        b["input_ids"][1:2, :11], b["token_type_ids"][1:2, :11], torch.ones(1, 11, dtype=torch.long)
    )
    torch.testing.assert_close(hidden[1:2, :11], alone, rtol=1e-5, atol=1e-5)


def test_parity_with_transformers_bert_for_pretraining():
    transformers = pytest.importorskip("transformers")
    cfg = tiny(sparse_mlm=False)
    ours = BertForPreTraining(cfg).eval()
    hf = transformers.BertForPreTraining(
        transformers.BertConfig(**hf_config_kwargs(cfg), attn_implementation="sdpa")
    ).eval()

    key_map = hf_state_dict_key_map(cfg)
    ours_state = ours.state_dict()
    # Every HF parameter is covered once (the decoder is tied: it appears as its tie target).
    hf_keys = set(hf.state_dict()) - {
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
    }
    assert set(key_map.values()) == hf_keys
    assert set(key_map) == set(ours_state) - {"mlm.word_embeddings.weight"}
    missing, unexpected = hf.load_state_dict(
        {key_map[k]: v for k, v in ours_state.items() if k in key_map}, strict=False
    )
    assert unexpected == []
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}

    b = batch()
    with torch.no_grad():
        o = ours(b["input_ids"], b["token_type_ids"], b["attention_mask"])
        h = hf(
            input_ids=b["input_ids"],
            token_type_ids=b["token_type_ids"],
            attention_mask=b["attention_mask"],
            output_hidden_states=True,
        )
    real = b["attention_mask"].bool()
    torch.testing.assert_close(o.mlm_logits[real], h.prediction_logits[real], rtol=0, atol=1e-4)
    torch.testing.assert_close(o.nsp_logits, h.seq_relationship_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(o.hidden_states[real], h.hidden_states[-1][real], rtol=0, atol=1e-4)


def test_pre_ln_layers_normalize_before_each_sublayer_and_once_at_the_end():
    cfg = tiny(norm_position="pre", hidden_dropout=0.0, attention_dropout=0.0)
    model = BertForPreTraining(cfg).eval()
    layer, x = model.bert.layers[0], torch.randn(2, 8, cfg.hidden_size)
    attn = x + layer.attention(layer.attention_norm(x), None)
    want = attn + layer.ffn_out(torch.nn.functional.gelu(layer.ffn_in(layer.ffn_norm(attn))))
    torch.testing.assert_close(layer(x, None), want)
    # The residual stream is left unnormalized by the layers; the final LayerNorm closes it.
    b = batch()
    out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    torch.testing.assert_close(out.hidden_states.mean(-1), torch.zeros(3, 16), atol=1e-5, rtol=0)
    loss = pretraining_loss(
        model.train()(
            **{k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask")},
            mlm_labels=b["labels"],
        ),
        b["labels"],
        b["next_sentence_label"],
    )[0]
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="no Hugging Face BERT equivalent"):
        hf_state_dict_key_map(cfg)
    with pytest.raises(ValueError, match="norm_position"):
        tiny(norm_position="sandwich")
    assert BertForPreTraining(tiny()).bert.final_norm is None  # post-LN (BERT) is the default


def _loss_and_grads(model: BertForPreTraining, b: dict) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], mlm_labels=b["labels"])
    loss = pretraining_loss(out, b["labels"], b["next_sentence_label"])[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_fused_qkv_gives_the_same_loss_and_gradients_as_three_projections():
    torch.manual_seed(0)
    plain = BertForPreTraining(tiny(fused_qkv=False)).eval()
    fused = BertForPreTraining(tiny(fused_qkv=True)).eval()
    fused.load_state_dict(plain.state_dict())  # same parameters, same names
    for b in (batch(), {**batch(seed=1), "attention_mask": torch.ones(3, 16, dtype=torch.long)}):
        plain_loss, plain_grads = _loss_and_grads(plain, b)
        fused_loss, fused_grads = _loss_and_grads(fused, b)
        torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-6, atol=1e-6)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_attention_gets_no_mask_without_padding_and_a_boolean_one_with(monkeypatch):
    # What reaches SDPA decides the kernel: None allows the fused mask-free paths; a bool
    # (B, 1, 1, T) mask broadcasts without a materialized float (B, nh, T, T) one.
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    model = BertForPreTraining(tiny()).eval()
    b = batch()
    model.bert(b["input_ids"], b["token_type_ids"], torch.ones(3, 16, dtype=torch.long))
    assert seen and all(m is None for m in seen)
    seen.clear()
    model.bert(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    assert seen and all(m.dtype == torch.bool and m.shape == (3, 1, 1, 16) for m in seen)


@pytest.mark.compile
def test_compiled_blocks_give_the_same_loss_and_gradients_as_eager():
    torch.manual_seed(0)
    eager = BertForPreTraining(tiny(hidden_dropout=0.0, attention_dropout=0.0))
    compiled = BertForPreTraining(tiny(hidden_dropout=0.0, attention_dropout=0.0))
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints unchanged
    # Different numbers of masked positions (the dynamic MLM head) and a padded batch.
    for seed in range(3):
        b = batch(seed=seed)
        eager_loss, eager_grads = _loss_and_grads(eager, b)
        compiled_loss, compiled_grads = _loss_and_grads(compiled, b)
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
        for name, grad in eager_grads.items():
            torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_sinusoidal_position_init_gives_distinct_positions_at_the_embeddings_scale():
    from pretrain.model import sinusoidal_positions

    table = sinusoidal_positions(64, 128)
    assert table.shape == (64, 128)
    torch.testing.assert_close(table[0, 1::2], torch.ones(64))  # cos(0) = 1
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    model = BertForPreTraining(tiny(position_init="sinusoidal"))
    pos = model.bert.embeddings.position.weight
    torch.testing.assert_close(pos, table * 0.02 * 2**0.5)
    # Neighbouring positions are more alike than distant ones from the start (not so for noise).
    sim = torch.nn.functional.normalize(pos, dim=-1) @ torch.nn.functional.normalize(pos, dim=-1).T
    assert sim[10, 11] > sim[10, 40] + 0.1
    assert model.cfg.norm_position == "post"  # an init choice only: exports like any BERT
    hf_state_dict_key_map(model.cfg)
    with pytest.raises(ValueError, match="position_init"):
        tiny(position_init="rotary")


@pytest.mark.parametrize("with_bias", [True, False])
def test_column_major_weight_linear_has_the_gradients_of_f_linear(with_bias):
    from pretrain.linear import _ColumnMajorWeightLinear

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if with_bias else None
    grad_out = torch.randn(3, 5, 6)
    leaves = [t for t in (x, w, b) if t is not None]
    expected = torch.autograd.grad(torch.nn.functional.linear(x, w, b), leaves, grad_out)
    ours = torch.autograd.grad(_ColumnMajorWeightLinear.apply(x, w, b), leaves, grad_out)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fast_cpu_bf16_backward_gives_the_loss_and_gradients_of_stock_autocast():
    torch.manual_seed(0)
    stock = BertForPreTraining(tiny(fast_cpu_bf16_backward=False)).eval()
    fast = BertForPreTraining(tiny(fast_cpu_bf16_backward=True)).eval()
    fast.load_state_dict(stock.state_dict())
    b = batch()
    _, reference = _loss_and_grads(stock, b)  # fp32: the yardstick for bf16 error
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock_loss, stock_grads = _loss_and_grads(stock, b)
        fast_loss, fast_grads = _loss_and_grads(fast, b)
    torch.testing.assert_close(fast_loss, stock_loss, rtol=0, atol=0)  # same forward GEMMs
    largest = max(g.norm() for g in reference.values())
    for name, grad in reference.items():
        if grad.norm() < 1e-3 * largest:
            continue  # e.g. attention key biases: exactly zero in exact arithmetic
        stock_error = (stock_grads[name] - grad).norm() / grad.norm()
        fast_error = (fast_grads[name] - grad).norm() / grad.norm()
        assert fast_error <= 2 * stock_error + 1e-2, (name, fast_error, stock_error)
