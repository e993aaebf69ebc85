"""`bert-finetune` and what it is built from: the app (`app`), its typed config (`config`), the
labelled data (`task_data` reads a task's splits, `data` checks, tokenizes and batches them), the
encoder and tokenizer it starts from (`encoder`), the LightningModule (`module`), the metrics
(`metrics`), the pretrained-vs-random comparison (`compare`) and evaluation during pretraining
(`downstream_eval`)."""
