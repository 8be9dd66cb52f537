"""A CPU stand-in for Triton's libtorch backend: runs `<model>/<version>/model.pt` (TorchScript) in Python.

nvidia-pytriton's tritonserver bundles no libtorch backend, so on a CPU machine the network models of
a u2serve repository (`backend: "u2serve_torchscript"`, written by `python -m handler.triton --serving
cpu`) run here: the very model.pt that `platform: "pytorch_libtorch"` runs on a GPU Triton, with the
same tensors (INPUT__0 (N, 3, S, S) FP32 -> OUTPUT__0 (N, 1, S, S) FP32). Not for GPU serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"


class TritonPythonModel:
    """Concatenates the batch's requests, runs the TorchScript once, splits d0 back per request."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("threads", "1")))
        path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        size = int(config["input"][0]["dims"][-1])
        # The first TorchScript calls profile and optimise the graph; pay that before traffic.
        with torch.inference_mode():
            for _ in range(2):
                self.model(torch.zeros(1, 3, size, size))

    def execute(self, requests: list[Any]) -> list[Any]:
        batches = [pb_utils.get_input_tensor_by_name(r, INPUT).as_numpy() for r in requests]
        with torch.inference_mode():
            d0 = self.model(torch.from_numpy(np.concatenate(batches))).numpy()
        bounds = np.cumsum([len(b) for b in batches])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, part)]) for part in np.split(d0, bounds)]
