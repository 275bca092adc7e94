"""Bundled assets of the embedded default model: corpus and datasets (tools/make_datasets.py
writes them, tools/tiny_model.py builds the model from them)."""
