"""`bert-finetune` and what it is built from: the app (`app`), the labelled data (`data`), the
metrics (`metrics`), the pretrained-vs-random comparison (`compare`) and evaluation during
pretraining (`downstream_eval`)."""
