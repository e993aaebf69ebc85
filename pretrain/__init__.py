"""Pretrain BERT from scratch: typed Hydra configs, a plain-PyTorch model, Lightning training."""
