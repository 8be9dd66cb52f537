"""A CPU stand-in for Triton's libtorch backend: runs the TorchServe archive's engine in Python.

nvidia-pytriton's tritonserver bundles no libtorch backend, so on a CPU machine the network models of
a u2serve repository (`backend: "u2serve_torchscript"`, written by `python -m handler.triton --serving
cpu`) run here, with the same tensors as `platform: "pytorch_libtorch"` on a GPU Triton (INPUT__0
(N, 3, S, S) FP32 -> OUTPUT__0 (N, 1, S, S) FP32). The engine is the one the TorchServe handler would
run: the config's `engine` and `threads` parameters are the archive's handler settings, the version
folder holds the archive's engine files (model.pt, model.bf16.pt, model.onnx), and
handler.triton.load_network picks with handler.engine's fallback chain (torchscript-bf16 -> onnxruntime
-> torchscript), which runs a CPU batch image by image as in the handler. Not for GPU serving.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

# tools/triton.py puts the handler package beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from handler.triton import load_network, network_log_line

INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"


class TritonPythonModel:
    """Concatenates the batch's requests, runs the engine on them, splits d0 back per request."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.engine, threads = load_network(config, Path(args["model_repository"]) / args["model_version"])
        size = int(config["input"][0]["dims"][-1])
        # The first TorchScript calls profile and optimise the graph; pay that before traffic.
        for _ in range(2):
            self.engine(torch.zeros(1, 3, size, size))
        pb_utils.Logger.log_info(network_log_line(args["model_name"], self.engine.name, params["engine"], threads))

    def execute(self, requests: list[Any]) -> list[Any]:
        batches = [pb_utils.get_input_tensor_by_name(r, INPUT).as_numpy() for r in requests]
        d0 = self.engine(torch.from_numpy(np.concatenate(batches))).numpy()
        bounds = np.cumsum([len(b) for b in batches])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, part)]) for part in np.split(d0, bounds)]
