"""ExportService: deployable copies of a model (ONNX with KV cache, merged safetensors),
each proven to match PyTorch before it is moved into place."""
