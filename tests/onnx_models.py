"""Small ONNX files made in the tests, to feed user-model backends real onnxruntime sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def save_onnx(path: Path, nodes: list[Any], inputs: list[tuple[str, list[int | str]]],
              outputs: list[tuple[str, list[int | str]]],
              weights: dict[str, np.ndarray]) -> Path:
    """One graph (float32 inputs and outputs by name and shape, named initialisers) at opset 17,
    checked by onnx and written to ``path``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
