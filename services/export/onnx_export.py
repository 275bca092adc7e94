"""ONNX export of a causal LM through optimum-onnx, with the KV cache.

The exporter is optimum's `onnx_export_from_model`, task `text-generation-with-past`: one
graph taking `input_ids`, `attention_mask`, `position_ids` and `past_key_values.N.key/value`
and returning `logits` and `present.N.key/value`, which `ORTModelForCausalLM.generate` (or
any KV-cache loop) decodes with. optimum runs PyTorch's TorchScript ONNX exporter
(`dynamo=False`) underneath.

Opset range:
- lowest: 14. transformers' attention for Qwen2-style models goes through
  `scaled_dot_product_attention`, which the TorchScript exporter can only write from opset
  14 (measured: opset 13 fails with UnsupportedOperatorError). optimum recommends 18
  (`DEFAULT_ONNX_OPSET`) but opsets 14-20 all export this model and pass the parity proof.
- highest: the lower of what PyTorch's TorchScript exporter supports
  (`ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET`, 20 in torch 2.13; higher numbers only warn and
  stamp the version) and the newest opset the installed onnxruntime loads (probed).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from services.common.errors import FailedPrecondition

log = logging.getLogger("wintrain.export")

TASK = "text-generation-with-past"
DEFAULT_MODEL_FILE = "model.onnx"
MIN_OPSET = 14
DEFAULT_OPSET = 14


@functools.cache
def ort_max_opset() -> int:
    """The newest default-domain opset the installed onnxruntime accepts, found by loading
    a one-node model at decreasing versions (milliseconds, done once)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for version in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        model.ir_version = min(model.ir_version, 10)
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - "opset not supported" is what we are probing for
            continue
        return version
    return MIN_OPSET


@functools.cache
def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) opset this service exports with."""
    try:
        from torch.onnx import _constants

        exporter_max = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):
        exporter_max = 20
    return MIN_OPSET, min(exporter_max, ort_max_opset())


def export_onnx(model, out_dir: Path, *, opset: int, model_file: str = DEFAULT_MODEL_FILE) -> list[Path]:
    """Export `model` (a PyTorch causal LM, fp32, eval mode) into the existing empty folder
    `out_dir`, as `model_file` with the KV cache, next to its config and generation config.
    Returns the ONNX files written (the graph first, then any external data). Raises
    FailedPrecondition when the exporter cannot handle the model."""
    from optimum.exporters.onnx import onnx_export_from_model

    try:
        # Our own proof (parity.py) replaces optimum's validation, which only warns.
        onnx_export_from_model(model, out_dir, opset=opset, task=TASK, do_validation=False)
    except (ValueError, RuntimeError, KeyError, NotImplementedError, TypeError) as exc:
        raise FailedPrecondition(f"the ONNX exporter failed for {type(model).__name__} at opset {opset}: {exc}") from exc
    produced = out_dir / DEFAULT_MODEL_FILE
    if not produced.is_file():
        raise FailedPrecondition(f"the ONNX exporter wrote no {DEFAULT_MODEL_FILE}")
    if model_file != DEFAULT_MODEL_FILE:
        rename_onnx_model(produced, out_dir / model_file)
    return onnx_files(out_dir / model_file)


def external_data_files(model_path: Path) -> list[str]:
    """Relative locations of the external data a model file refers to."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(model_path), load_external_data=False)
    locations = []
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in locations:
                    locations.append(entry.value)
    return locations


def onnx_files(model_path: Path) -> list[Path]:
    """The model file and the external data files it uses."""
    return [model_path, *(model_path.parent / loc for loc in external_data_files(model_path))]


def rename_onnx_model(src: Path, dst: Path) -> None:
    """Rename an ONNX model file, and its external data (to `<dst name>_data`) so two models
    in one folder never share a data file; the graph's references are rewritten to match.
    The weights are not loaded: only the small graph file is rewritten."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(src), load_external_data=False)
    renames: dict[str, str] = {}
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                new = renames.setdefault(entry.value, dst.name + "_data" + ("" if not renames else f"_{len(renames)}"))
                entry.value = new
    if not renames:
        os.replace(src, dst)
        return
    for old, new in renames.items():
        os.replace(src.parent / old, dst.parent / new)
    dst.write_bytes(proto.SerializeToString())
    src.unlink()
    log.info("renamed ONNX model", extra={"model_file": dst.name, "external_data": ",".join(renames.values())})
