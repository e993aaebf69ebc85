"""Offline data preparation: corpus reading, WordPiece training and NSP pair building."""
