"""`head=crf`: the linear-chain CRF against brute-force enumeration of every label path (log-partition,
Viterbi, marginals), the BIO rule, the packing of word positions, and a tiny `bert-finetune` run with
it (trains, evaluates, saves), read back by `bert-predict` and refused by `bert-export`."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from pretrain.errors import UserError
from pretrain.finetune.crf import LinearChainCRF, pack_words
from tests.finetune_rows import finetune_config, finetune_tiny

LABELS = ["O", "B-X", "I-X"]
TWO_TYPES = ["O", "B-A", "I-A", "B-B", "I-B"]


def is_valid(path: tuple[int, ...], labels: list[str]) -> bool:
    """BIO, written out: an I-X only right after B-X or I-X, never first."""
    previous = "O"
    for i in path:
        tag = labels[i]
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


@torch.no_grad()
def brute_force(crf: LinearChainCRF, emissions: torch.Tensor, n: int, labels: list[str]):
    """(score of every valid path of length n, keyed by path) for one sentence (W, L)."""
    scores = {}
    for path in itertools.product(range(len(labels)), repeat=n):
        if not is_valid(path, labels):
            continue
        s = crf.start[path[0]] + crf.end[path[-1]]
        s = s + sum(emissions[t, y] for t, y in enumerate(path))
        s = s + sum(crf.transitions[a, b] for a, b in itertools.pairwise(path))
        scores[path] = float(s)
    return scores


def random_crf(labels: list[str], seed: int, scale: float = 1.0) -> LinearChainCRF:
    crf = LinearChainCRF(labels).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return crf


def test_forward_viterbi_and_marginals_equal_brute_force():
    """3 labels, 4 words, sentences of 4, 2 and 1 words in one batch (and an empty one)."""
    crf = random_crf(LABELS, seed=0)
    lengths = [4, 2, 1, 0]
    g = torch.Generator().manual_seed(1)
    emissions = torch.randn(len(lengths), 4, 3, generator=g, dtype=torch.float64) * 2
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]  # (B, W)
    crf.requires_grad_(False)
    log_z = crf.log_partition(emissions, mask)
    best = crf.decode(emissions, mask)
    marginals = crf.marginals(emissions, mask)
    for b, n in enumerate(lengths):
        if n == 0:
            assert float(log_z[b]) == 0.0 and not best[b].any() and not marginals[b].any()
            continue
        scores = brute_force(crf, emissions[b], n, LABELS)
        assert len(scores) < 3**n or n == 1  # the BIO rule removed paths
        expected = math.log(sum(math.exp(s) for s in scores.values()))
        assert float(log_z[b]) == pytest.approx(expected, abs=1e-9)
        argmax = max(scores, key=scores.get)
        assert tuple(best[b, :n].tolist()) == argmax and not best[b, n:].any()
        for t in range(n):
            for y in range(3):
                p = sum(math.exp(s - expected) for path, s in scores.items() if path[t] == y)
                assert float(marginals[b, t, y]) == pytest.approx(p, abs=1e-9)
        assert not marginals[b, n:].any()
        gold = torch.tensor([argmax + (0,) * (4 - n)])
        nll = crf.nll(emissions[b : b + 1], gold, mask[b : b + 1])
        assert float(nll) == pytest.approx(expected - scores[argmax], abs=1e-9)


def test_decoding_never_breaks_bio_even_where_the_scores_want_it():
    """Emissions that favour I- tags everywhere (at the start, after O, after the other type)."""
    crf = random_crf(TWO_TYPES, seed=2, scale=3.0)
    g = torch.Generator().manual_seed(3)
    emissions = torch.randn(64, 7, 5, generator=g, dtype=torch.float64) * 4
    emissions[..., [2, 4]] += 6.0  # I-A and I-B
    lengths = torch.randint(1, 8, (64,), generator=g)
    mask = torch.arange(7)[None, :] < lengths[:, None]
    paths = crf.decode(emissions, mask)
    greedy = emissions.argmax(-1).tolist()  # each word on its own, as the softmax head decodes
    cases = list(zip(paths.tolist(), greedy, lengths.tolist(), strict=True))
    assert sum(not is_valid(tuple(g[:n]), TWO_TYPES) for _, g, n in cases) > 32
    for row, _, n in cases:
        assert is_valid(tuple(row[:n]), TWO_TYPES), row[:n]
    assert crf.marginals(emissions, mask)[:, 0, [2, 4]].abs().max() == 0  # no I- first


def test_gold_tags_that_break_bio_train_as_the_same_entities():
    """`O I-A I-A B-B I-A` (conlleval: two A entities, one B) is scored as `O B-A I-A B-B B-A`;
    the loss is finite and its gradients too."""
    crf = random_crf(TWO_TYPES, seed=4)
    tags = torch.tensor([[0, 2, 2, 3, 2], [2, 1, 4, 0, 0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    assert crf.valid_tags(tags).tolist() == [[0, 1, 2, 3, 1], [1, 1, 3, 0, 0]]
    emissions = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    loss = crf.nll(emissions, tags, mask).sum()
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in (emissions, *crf.parameters())
    )


def test_words_are_packed_from_their_first_pieces():
    # [CLS] w0 w0## w1 [SEP] | [CLS] w0 [SEP] pad pad
    starts = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    scores = torch.arange(10, dtype=torch.float32).reshape(2, 5, 1)  # (B, T, 1): the position
    words, mask, positions = pack_words(scores, starts)
    assert mask.tolist() == [[True, True], [True, False]]
    assert positions[mask].tolist() == [1, 3, 1] and words[mask].squeeze(-1).tolist() == [1, 3, 6]


def test_unreachable_labels_and_sequence_tasks_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"label 'I-X' has no B-X .*add B-X to task\.labels"):
        LinearChainCRF(["O", "I-X"])
    with pytest.raises(UserError, match=r"head=crf tags the words of token_classification"):
        finetune_config(tmp_path, "task=sequence_classification", "task.name=s", "model_path=m",
                        "head=crf")  # fmt: skip
    with pytest.raises(UserError, match=r"head='beam' is unknown; use one of \('softmax', 'crf'\)"):
        finetune_config(tmp_path, "task=token_classification", "task.name=t", "model_path=m",
                        "head=beam")  # fmt: skip


# --------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def crf_run(tiny_model, token_files, tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("crf_run")
    result = finetune_tiny(work, "task=token_classification", "task.name=ph", "head=crf",
        f"model_path={tiny_model}", "trainer.max_epochs=3", *token_files)  # fmt: skip
    return work / "finetune" / "ph-pretrained-s1234", result


def test_a_crf_run_trains_evaluates_and_is_read_back(crf_run, tmp_path):
    from pretrain.finetune.finetuned import load_finetuned
    from pretrain.finetune.predict import PredictConfig, predict

    run_dir, result = crf_run
    assert result["head"] == "crf" and result["test"]["f1"] > 0.5, result
    assert "head: crf" in (run_dir / "config.yaml").read_text()
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert {"crf.transitions", "crf.start", "crf.end"} <= set(state)
    loaded = load_finetuned(run_dir)
    assert loaded.module.crf is not None
    assert torch.equal(loaded.module.crf.transitions, state["crf.transitions"].float())

    # bert-predict on the run directory: the run's own test entities, from the Viterbi path
    records = [json.loads(line) for line in (run_dir / "test_predictions.jsonl").open()]
    texts = [" ".join(r["tokens"]) for r in records]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    rows = predict(PredictConfig(model_path=str(run_dir), input=str(tmp_path / "in.txt"),
                                 output=str(tmp_path / "out.jsonl"), batch_size=5))  # fmt: skip
    found = 0
    for record, text, row in zip(records, texts, rows, strict=True):
        tags = record["predictions"]
        expected = [(" ".join(record["tokens"][a:b]), k) for k, a, b in sorted_entities(tags)]
        assert [(s["text"], s["label"]) for s in row["entities"]] == expected
        for span in row["entities"]:
            assert text[span["start"] : span["end"]] == span["text"] and 0 < span["score"] <= 1
        found += len(expected)
    assert found > 0


def sorted_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    from pretrain.finetune.metrics import bio_entities

    return sorted(bio_entities(tags), key=lambda e: e[1])


def test_export_of_a_crf_run_is_refused_in_one_line(crf_run, tmp_path):
    from pretrain.export import export_finetuned

    with pytest.raises(UserError, match=r"head=crf cannot be a plain BertForTokenClassification"
                       r".*bert-predict") as err:  # fmt: skip
        export_finetuned(crf_run[0], tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
