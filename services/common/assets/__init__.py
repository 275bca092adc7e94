"""Bundled assets of the embedded default model: corpus, datasets and their generator."""
