"""`python -m pretrain.finetune`: the same as `bert-finetune`."""

from pretrain.finetune.app import main

main()
