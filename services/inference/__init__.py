"""InferenceService: model registry (LRU, LoRA adapters), KV-cached streaming, batches."""
