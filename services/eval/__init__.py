"""EvalService: masked loss, perplexity and token accuracy over assistant tokens, and
generation metrics (exact match, ROUGE through evalscope) on conversations datasets."""
