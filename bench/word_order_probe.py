"""Does a pretrained model use word order, or is it still a bag of words ("unigram plateau")?

Scores held-out MLM three ways on the same masked batch: as is; with the unmasked tokens of each
pair shuffled among themselves (word order destroyed, the bag of words kept: the check every
pretraining summary prints, pretrain/word_order.py); and with every position embedding replaced
by their mean (positions made indistinguishable). A model that uses
word order loses a lot in the last two; a bag-of-words model loses almost nothing. Then prints
`fill-mask` guesses for a few sentences.

    python bench/word_order_probe.py --model work/runs/cpu_budget_phase2 --data work/data/demo-seq128

docs/RESULTS.md (learning quality) quotes its output for the recipe's models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer

from pretrain.data import PairDataset
from pretrain.masking import MaskingCollator, MaskingConfig
from pretrain.weights import load_pretrained
from pretrain.word_order import masked_lm_score as score
from pretrain.word_order import shuffle_context

SENTENCES = (
    "the united states of [MASK] .",
    "the president of the united [MASK] .",
    "i [MASK] to the store yesterday .",
    "he said that he [MASK] not know .",
)


def report(what: str, result: tuple[float, float]) -> None:
    print(f"  {what:<20} MLM loss {result[0]:.3f}  accuracy {result[1]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="run dir, .ckpt or Hugging Face dir")
    parser.add_argument(
        "--data", required=True, help="a bert-prep output dir (its validation split)"
    )
    parser.add_argument("--pairs", type=int, default=512, help="held-out pairs to score")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pretrained = load_pretrained(args.model)
    model = pretrained.model.eval()
    tokenizer = Tokenizer.from_file(str(pretrained.tokenizer_dir / "tokenizer.json"))
    pad, cls, sep, mask = (tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))
    collator = MaskingCollator(
        MaskingConfig(mlm_probability=0.15),
        vocab_size=model.cfg.vocab_size,
        pad_id=pad,
        mask_id=mask,
        special_ids=[pad, cls, sep, mask],
        seed=args.seed,
    )
    data = PairDataset(Path(args.data) / "validation")
    n = min(args.pairs, len(data))
    batch = collator(data.__getitems__([(0, i) for i in range(n)]))

    print(f"{args.model}: {n} held-out pairs of {args.data}, 15% masked")
    report("as is", score(model, batch, batch["input_ids"]))
    report(
        "context shuffled",
        score(model, batch, shuffle_context(batch, [pad, cls, sep, mask], args.seed)),
    )
    table = model.bert.embeddings.position.weight
    saved = table.detach().clone()
    with torch.no_grad():
        table.copy_(saved.mean(0, keepdim=True).expand_as(saved))
        averaged = score(model, batch, batch["input_ids"])
        table.copy_(saved)
    report("positions averaged", averaged)

    for sentence in SENTENCES:
        encoding = tokenizer.encode(sentence)
        ids = torch.tensor([encoding.ids])
        where = encoding.ids.index(mask)
        with torch.no_grad():
            hidden, _ = model.bert(ids, torch.zeros_like(ids), torch.ones_like(ids))
            top = model.mlm(hidden[0, where]).topk(5).indices.tolist()
        print(f"  {sentence!r:<42} -> {[tokenizer.id_to_token(t) for t in top]}")


if __name__ == "__main__":
    main()
