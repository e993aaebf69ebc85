"""Training throughput of our BERT against `transformers.BertForPreTraining`, side by side.

Both models get the same architecture, batch, sequence length, masked positions and precision, and
train (forward, backward, AdamW step) in interleaved rounds in one process, so machine noise hits
both alike. Prints tokens/s per model and the median of the per-round ratios.

    python bench/throughput.py --model bert-mini --seq 128 --batch 32 --precision fp32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from pretrain.model import BertForPreTraining, hf_config_kwargs, preset, pretraining_loss


def make_batch(batch: int, seq: int, vocab: int, mask_rate: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(batch, seq, generator=g) < mask_rate
    labels[chosen] = ids[chosen]
    return dict(
        input_ids=ids,
        token_type_ids=torch.zeros_like(ids),
        attention_mask=torch.ones_like(ids),
        labels=labels,
        next_sentence_label=torch.randint(0, 2, (batch,), generator=g),
    )


def ours_step(model, b):
    out = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], mlm_labels=b["labels"])
    return pretraining_loss(out, b["labels"], b["next_sentence_label"])[0]


def hf_step(model, b):
    return model(
        input_ids=b["input_ids"],
        token_type_ids=b["token_type_ids"],
        attention_mask=b["attention_mask"],
        labels=b["labels"],
        next_sentence_label=b["next_sentence_label"],
    ).loss


def timed_steps(step_fn, model, opt, batch, steps: int, autocast: bool) -> float:
    """Seconds per training step, averaged over `steps`."""
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = step_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> None:
    import transformers

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="bert-mini")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    args = p.parse_args()

    torch.manual_seed(0)
    cfg = preset(args.model, vocab_size=args.vocab, hidden_dropout=0.1, attention_dropout=0.1)
    ours = BertForPreTraining(cfg).train()
    hf = transformers.BertForPreTraining(
        transformers.BertConfig(**hf_config_kwargs(cfg), attn_implementation="sdpa")
    ).train()
    peers = {
        "ours": (ours_step, ours, torch.optim.AdamW(ours.parameters(), lr=1e-4)),
        "hf": (hf_step, hf, torch.optim.AdamW(hf.parameters(), lr=1e-4)),
    }
    batch = make_batch(args.batch, args.seq, args.vocab, args.mask_rate)
    autocast = args.precision == "bf16"
    tokens = args.batch * args.seq
    for fn, model, opt in peers.values():  # warm-up
        timed_steps(fn, model, opt, batch, 2, autocast)

    rates: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(args.rounds):
        for name, (fn, model, opt) in peers.items():
            rates[name].append(tokens / timed_steps(fn, model, opt, batch, args.steps, autocast))
    ratios = [o / h for o, h in zip(rates["ours"], rates["hf"], strict=True)]
    print(
        f"{args.model} seq {args.seq} batch {args.batch} {args.precision}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    for name, r in rates.items():
        print(
            f"  {name:5s} {statistics.median(r):10,.0f} tokens/s (median of {args.rounds} rounds)"
        )
    print(
        f"  ratio ours/hf {statistics.median(ratios):.2f}× (median of per-round ratios; "
        f"min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
