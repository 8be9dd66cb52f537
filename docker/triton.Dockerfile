# u2serve on NVIDIA's Triton (GPU): the segment models run in the Python-based backend u2serve_segment
# (the TorchServe handler's pipeline), the networks in Triton's libtorch backend. Build context: the repo,
# after `make triton-repo` (triton_repo/ for a GPU Triton):
#   docker build -f docker/triton.Dockerfile -t u2serve-triton:gpu .
# 24.10 is Triton 2.51, the release nvidia-pytriton 0.7.0 bundles (what the tests run on a CPU).
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# The segment backend imports the handler package and the u2serve package whose core it shares (the pipeline
# and the protocol: imaging, options, the generated stubs, built by the package's build hook).
# The Python backend of 24.10 exchanges tensors with numpy 1.x; torch for the pipeline's tensor steps
# (CPU wheels: the network runs in libtorch, not in Python).
WORKDIR /opt/u2serve-src
COPY pyproject.toml setup.py MANIFEST.in NOTICE README.md ./
COPY protos/ protos/
COPY client/ client/
RUN pip install --no-cache-dir "numpy==1.26.4" . \
        --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"

COPY handler/triton_backends/u2serve_segment/model.py /opt/tritonserver/backends/u2serve_segment/model.py
COPY handler/*.py /opt/tritonserver/backends/u2serve_segment/handler/
COPY triton_repo/ /models/

RUN groupadd --system --gid 10001 u2serve \
    && useradd --system --uid 10001 --gid 10001 --create-home u2serve
USER 10001:10001
EXPOSE 8000 8001 8002
# The restricted-API keys come from the pod's Secret; see deploy/triton/deployment.yaml.
ENTRYPOINT ["tritonserver", "--model-repository=/models"]
