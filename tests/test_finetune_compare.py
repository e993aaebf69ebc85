"""The side-by-side table of `pretrain.finetune_compare` (the runs themselves: tests/test_finetune.py)."""

from __future__ import annotations

from pretrain.finetune_compare import format_table, summarize


def test_summary_table_means_each_init_over_seeds():
    runs = [
        {"task": "rt", "metric": "accuracy", "init": init, "seed": seed, "test": {"accuracy": acc}}
        for init, seed, acc in [
            ("pretrained", 1, 0.70),
            ("random", 1, 0.60),
            ("pretrained", 2, 0.80),
            ("random", 2, 0.62),
        ]
    ]
    table = summarize(runs)
    assert table == {
        "rt": {"metric": "accuracy", "pretrained": [0.70, 0.80], "random": [0.60, 0.62]}
    }
    text = format_table(table, [1, 2])
    assert (
        "| rt | accuracy | 0.7500 ± 0.0707 | 0.6100 ± 0.0141 | 0.700 / 0.600, 0.800 / 0.620 |"
        in text
    )
