"""Dynamic int8 quantization of an exported ONNX model with onnxruntime's own tools.

Weights of MatMul/Gather become int8 (activations are quantized at run time), which roughly
quarters the weight bytes. Logits move by far more than the fp32 tolerance, so the proof of
a quantized model reports its logits difference and greedy-token agreement without holding
it to the fp32 tolerance.
"""

from __future__ import annotations

from pathlib import Path

from services.common.errors import FailedPrecondition
from services.export.onnx_export import external_data_files, rename_onnx_model


def quantized_name(model_file: str) -> str:
    """`model.onnx` -> `model_int8.onnx`."""
    stem = model_file[: -len(".onnx")] if model_file.endswith(".onnx") else model_file
    return f"{stem}_int8.onnx"


def quantize_int8(model_path: Path, output_path: Path) -> None:
    """Write a dynamically int8-quantized copy of `model_path` to `output_path` (external
    data beside it, as `<name>_data`, when the source uses external data). Raises
    FailedPrecondition when onnxruntime cannot quantize the graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime names external data `<file>.data`; write under a scratch name, then rename
    # both so the int8 model follows the `<name>_data` convention of the fp32 one.
    scratch = output_path.with_name(f".{output_path.stem}.quantizing.onnx")
    try:
        quantize_dynamic(
            model_input=str(model_path),
            model_output=str(scratch),
            weight_type=QuantType.QInt8,
            per_channel=False,
            use_external_data_format=bool(external_data_files(model_path)),
        )
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise FailedPrecondition(f"int8 quantization failed: {exc}") from exc
    rename_onnx_model(scratch, output_path)
