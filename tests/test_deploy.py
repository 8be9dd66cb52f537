"""The Kubernetes and KServe manifests, validated offline: schemas (kubernetes-validate's bundled ones),
and the references between the objects that no schema checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kserve_schema import InferenceServiceSchema, SchemaError, kserve_version
from test_memory import LIMIT_MIB as WORKER_BOUND_MIB

from benchmarks import results as R
from handler.build import DEFAULTS
from handler.model import VARIANTS
from handler.triton import NETWORK_SUFFIX, TritonSettings
from u2serve.web.auth import parse_caller_keys
from u2serve.web.metrics import Metrics
from u2serve.web.routers import ROUTERS
from u2serve.web.settings import CALLER_KEYS_ENV, GRPC_PORT_ENV, Settings
from u2serve.web.settings import DEFAULT_GRPC_PORT as GRPC_PORT
from u2serve.web.settings import DEFAULT_PORT as WEB_PORT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DOCKERFILE = DEPLOY.parent / "Dockerfile"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests target
LABELS = {"app.kubernetes.io/name": "u2serve"}
# Beside the workers and the frontend's heap: the JVM's own (metaspace, threads, buffers) and the gateway.
JVM_AND_GATEWAY_MIB = 768


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()
    return int(number) * units[unit]


def worker_mib(model: str) -> float:
    """A worker's memory: the memory test's bound, or the bench sweep's recorded peak where that is higher."""
    records = [r for r in R.read_all([R.RESULTS_DIR]) if isinstance(r, R.EndToEnd) and r.served.model == model]
    peaks = [x for r in records for point in r.sweep for x in point.worker_rss_mib]
    return max([WORKER_BOUND_MIB[model], *peaks])


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_schemas(path):
    for doc in documents(path):
        if doc["kind"] == "Kustomization":
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    listed = set(documents(DEPLOY / "k8s" / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds():
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, check=True)
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in built)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "u2serve" for d in built)


def test_the_gateway_is_the_pods_front_door_and_torchserve_listens_on_loopback(objects):
    deployment = objects[("Deployment", "u2serve")]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"] == LABELS
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": WEB_PORT, "grpc": GRPC_PORT}  # the gateway's, as the image's entrypoint starts it
    assert f"U2SERVE_WEB_PORT={WEB_PORT}" in DOCKERFILE.read_text()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[GRPC_PORT_ENV] == str(GRPC_PORT)  # the gateway's gRPC front, the SDK's way in
    probes = {probe: container[probe]["httpGet"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in probes.values()} == {"http"}
    assert [p["path"] for p in probes.values()] == ["/healthz", "/readyz", "/healthz"]
    routes = {getattr(route, "path", None) for router in ROUTERS for route in router.routes}
    assert {"/healthz", "/readyz"} <= routes
    # The image's own entrypoint (Dockerfile, docker/entrypoint.sh) runs TorchServe in the foreground on the
    # mounted config ($U2SERVE_CONFIG), then the gateway on the caller keys when $U2SERVE_CALLER_KEYS is set.
    assert "command" not in container and "args" not in container
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE.read_text(), re.M).group(1))
    script = (DOCKERFILE.parent / entrypoint[-1].removeprefix("/opt/u2serve/")).read_text()
    assert '--foreground --ncs --ts-config "${U2SERVE_CONFIG}"' in script
    assert f'"${{{CALLER_KEYS_ENV}:-}}"' in script
    assert f'--grpc-port "${{{GRPC_PORT_ENV}}}"' in script
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == re.search(r"U2SERVE_CONFIG=(\S+)", DOCKERFILE.read_text()).group(1)
    user = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.M)[-1]
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == user[0]
    config_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    config = properties(objects[("ConfigMap", config_volume["configMap"]["name"])]["data"]["config.properties"])
    for api in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(config[api]).hostname == "127.0.0.1", api
    assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"
    # The gateway's own calls go to TorchServe's defaults on the pod's loopback, without a key.
    gateway = Settings(key_file=None, caller_keys=Path("keys"))  # as the entrypoint starts it in the pod
    assert gateway.target == f"127.0.0.1:{config['grpc_inference_port']}"
    assert gateway.management_target == f"127.0.0.1:{config['grpc_management_port']}"
    assert config["disable_token_authorization"] == "true" and config["enable_model_api"] == "false"
    assert config["model_store"] in DOCKERFILE.read_text()


def test_callers_keys_come_from_the_secret_mounted_as_a_folder(objects):
    pod = objects[("Deployment", "u2serve")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    secret = objects[("Secret", volume["secret"]["secretName"])]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    # No subPath: the kubelet updates a Secret volume's files in place only when the folder is mounted.
    assert "subPath" not in mount and mount["readOnly"] is True
    (data_key,) = secret["stringData"]
    assert env[CALLER_KEYS_ENV] == f"{mount['mountPath']}/{data_key}"
    assert parse_caller_keys(secret["stringData"][data_key]), "the Secret's file has no key line"


def test_only_the_gateways_ports_are_in_a_service_or_open_to_the_network(objects):
    config = properties(objects[("ConfigMap", "u2serve-config")]["data"]["config.properties"])
    torchserve = {int(urlsplit(config[a]).port) for a in ("inference_address", "management_address", "metrics_address")}
    torchserve |= {int(config["grpc_inference_port"]), int(config["grpc_management_port"])}
    services = [doc for (kind, _), doc in objects.items() if kind == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["u2serve"]
    (service,) = services
    assert service["spec"]["selector"] == LABELS
    ports = [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]]
    assert ports == [("http", WEB_PORT, "http"), ("grpc", GRPC_PORT, "grpc")]
    assert [p.get("appProtocol") for p in service["spec"]["ports"]] == [None, "grpc"]
    assert not torchserve & {p["port"] for s in services for p in s["spec"]["ports"]}
    assert GRPC_PORT not in torchserve
    policy = objects[("NetworkPolicy", "u2serve")]
    assert policy["spec"]["podSelector"]["matchLabels"] == LABELS
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {WEB_PORT, GRPC_PORT}
    pdb = objects[("PodDisruptionBudget", "u2serve")]
    assert pdb["spec"]["selector"]["matchLabels"] == LABELS
    hpa = objects[("HorizontalPodAutoscaler", "u2serve")]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]  # a drain leaves a pod serving


def test_hpa_scales_the_deployment_on_the_gauge_the_gateway_exports(objects):
    hpa = objects[("HorizontalPodAutoscaler", "u2serve")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "u2serve")
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    gauges = {m.name for m in Metrics().registry.collect() if m.type == "gauge"}
    assert name in gauges, f"{name} is not a gauge of the gateway's /metrics: {sorted(gauges)}"
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    rules = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    assert name in rules[name]["seriesQuery"] and name in rules[name]["metricsQuery"]


def test_memory_is_sized_from_the_workers_bound_and_the_bench_records(objects):
    """The container's memory holds each worker at the larger of the bound tests/test_memory.py enforces (batches
    of 8) and the peak RSS the bench's sweep recorded (up to 16 callers), the frontend's capped heap and the
    gateway; requests equal limits, so a worker is never the one evicted for another pod's burst."""
    (container,) = objects[("Deployment", "u2serve")]["spec"]["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert mebibytes(requests["memory"]) == mebibytes(limits["memory"])
    config = properties(objects[("ConfigMap", "u2serve-config")]["data"]["config.properties"])
    heap = mebibytes(re.search(r"-Xmx(\d+[mg])", config["vmargs"]).group(1).upper() + "i")
    models = config["load_models"].replace(".mar", "").split(",")
    workers = int(config["default_workers_per_model"]) * sum(worker_mib(m) for m in models)
    assert mebibytes(limits["memory"]) >= workers + heap + JVM_AND_GATEWAY_MIB


# ---- KServe (deploy/kserve): the InferenceServices on the TorchServe and Triton runtimes --------------

KSERVE = DEPLOY / "kserve"
INFERENCE_SERVICES = sorted(KSERVE.glob("inferenceservice*.yaml"))
KSERVE_TRITON_GRPC_PORT = 9000  # kserve-tritonserver's --grpc-port: KServe's runtime, not in this repository


@pytest.fixture(scope="module")
def isvc_schema() -> InferenceServiceSchema:
    return InferenceServiceSchema(K8S_VERSION)


def test_the_kserve_models_read_are_the_makefiles_pin():
    pin = re.search(r"\bkserve==(\S+)", (DEPLOY.parent / "Makefile").read_text()).group(1)
    assert kserve_version() == pin


@pytest.mark.parametrize("path", INFERENCE_SERVICES, ids=lambda p: p.name)
def test_inference_services_validate_against_the_kserve_and_kubernetes_schemas(path, isvc_schema):
    (isvc,) = documents(path)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    isvc_schema.validate(isvc)


def _model(isvc: dict) -> dict:
    return isvc["spec"]["predictor"]["model"]


# Each breaks the Triton InferenceService once; the one problem reported names its path.
BREAKAGES = {
    "unknown-field": (
        lambda d: _model(d)["modelFormat"].update(flavour="x"),
        r"spec\.predictor\.model\.modelFormat\.flavour: unknown field of V1beta1ModelFormat",
    ),
    "wrong-type": (
        lambda d: d["spec"]["predictor"].update(minReplicas="two"),
        r"spec\.predictor\.minReplicas: str 'two', expected int",
    ),
    "missing-required": (
        lambda d: _model(d).pop("modelFormat"),
        r"spec\.predictor\.model\.modelFormat: required by V1beta1ModelSpec",
    ),
    "missing-predictor": (
        lambda d: d["spec"].pop("predictor"),
        r"spec\.predictor: required by V1beta1InferenceServiceSpec",
    ),
    "kubernetes-field": (
        lambda d: _model(d)["resources"].update(limit=_model(d)["resources"].pop("limits")),
        r"spec\.predictor\.model\.resources: .*'limit' was unexpected.*io\.k8s\.api\.core\.v1\.ResourceRequirements",
    ),
    "kubernetes-port-type": (
        lambda d: _model(d)["ports"][0].update(containerPort=str(_model(d)["ports"][0]["containerPort"])),
        r"spec\.predictor\.model\.ports\[0\]\.containerPort: '\d+' is not of type 'integer'",
    ),
    "kubernetes-required": (
        lambda d: _model(d)["env"][0].pop("name"),
        r"spec\.predictor\.model\.env\[0\]: 'name' is a required property",
    ),
    "pod-level-kubernetes-field": (
        lambda d: d["spec"]["predictor"]["volumes"][0]["emptyDir"].update(size="1Gi"),
        r"spec\.predictor\.volumes\[0\]\.emptyDir: .*'size' was unexpected",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_inference_service_fails_naming_the_path(breakage, isvc_schema):
    (isvc,) = documents(KSERVE / "inferenceservice-triton.yaml")
    mutate, message = BREAKAGES[breakage]
    mutate(isvc)
    with pytest.raises(SchemaError, match=message) as caught:
        isvc_schema.validate(isvc)
    assert len(str(caught.value).splitlines()) == 1, str(caught.value)


def test_kserve_inference_service_speaks_grpc_v2_to_torchserve():
    (isvc,) = documents(KSERVE / "inferenceservice.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "grpc-v2"
    assert model["storageUri"]
    assert model["ports"] == [{"name": "h2c", "containerPort": 7070, "protocol": "TCP"}]
    predictor = isvc["spec"]["predictor"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", DEFAULTS["cuda"].batch_size)
    config = properties((KSERVE / "config.properties").read_text())
    assert config["ts_open_inference_protocol"] == "true"
    assert int(config["grpc_inference_port"]) == model["ports"][0]["containerPort"]
    assert config["model_store"] == "/mnt/models/model-store"


def test_a_bad_manifest_is_caught():
    bad = documents(DEPLOY / "k8s" / "hpa.yaml")[0]
    bad["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = {"ms": 100}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# ---- the Triton variant (deploy/triton, docker/triton.Dockerfile) ---------------------------------------

TRITON = DEPLOY / "triton"
TRITON_DOCKERFILE = DEPLOY.parent / "docker" / "triton.Dockerfile"
TRITON_LABELS = {"app.kubernetes.io/name": "u2serve-triton"}


@pytest.fixture(scope="module")
def triton_objects() -> dict[tuple[str, str], dict]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in sorted(TRITON.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in documents(path)
    }


@pytest.mark.parametrize("path", sorted(TRITON.glob("*.yaml")), ids=lambda p: p.name)
def test_triton_manifests_validate_against_the_kubernetes_schemas(path):
    for doc in documents(path):
        if doc["kind"] != "Kustomization":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_triton_kustomization_lists_every_manifest():
    listed = set(documents(TRITON / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in TRITON.glob("*.yaml")} - {"kustomization.yaml"}


def test_triton_deployment_runs_the_image_on_a_gpu_with_probes_on_tritons_health(triton_objects):
    deployment = triton_objects[("Deployment", "u2serve-triton")]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"] == TRITON_LABELS
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    args = container["args"]
    assert {f"--{name}-port={port}" for name, port in ports.items()} <= set(args)
    paths = {probe: container[probe]["httpGet"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in paths.values()} == {"http"}
    assert [p["path"] for p in paths.values()] == ["/v2/health/ready", "/v2/health/ready", "/v2/health/live"]
    # The APIs that change or run things want the keys of the Secret; health and metadata stay open.
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert {ref["name"] for ref in env.values()} == {"u2serve-triton-keys"}
    restricted = {a.split("=", 1)[1].split(":", 1)[0]: a for a in args if "restricted" in a}
    assert set(restricted) == {"inference", "model-repository,shared-memory,trace,logging"}
    assert all(f"authorization=Bearer $({name})" in " ".join(args) for name in env)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", TRITON_DOCKERFILE.read_text(), re.M).group(1))
    assert entrypoint == ["tritonserver", "--model-repository=/models"] and "command" not in container
    user = re.findall(r"^USER (\d+):(\d+)$", TRITON_DOCKERFILE.read_text(), re.M)[-1]
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == user[0]


def test_triton_image_carries_the_repository_and_the_segment_backend():
    text = TRITON_DOCKERFILE.read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", text, re.M)  # Triton 2.51, as tested
    lines = [line.split()[1:] for line in text.splitlines() if line.startswith("COPY ")]
    copies = {src: args[-1] for args in lines for src in args[:-1]}
    assert copies["triton_repo/"] == "/models/"
    assert copies["handler/triton_backends/u2serve_segment/model.py"].startswith("/opt/tritonserver/backends/")
    assert {"setup.py", "protos/", "client/"} <= set(copies)  # the SDK package, stubs built by its hook
    for src in copies:
        if src != "triton_repo/":  # written by `make triton-repo`
            assert list(DEPLOY.parent.glob(src.rstrip("/"))), src
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([found, "--no-color", str(TRITON_DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_triton_services_pdb_and_policy_select_the_pods(triton_objects):
    container = triton_objects[("Deployment", "u2serve-triton")]["spec"]["template"]["spec"]["containers"][0]
    service = triton_objects[("Service", "u2serve-triton")]
    assert service["spec"]["selector"] == TRITON_LABELS
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}
    assert triton_objects[("PodDisruptionBudget", "u2serve-triton")]["spec"]["selector"]["matchLabels"] == TRITON_LABELS
    policy = triton_objects[("NetworkPolicy", "u2serve-triton")]
    assert policy["spec"]["podSelector"]["matchLabels"] == TRITON_LABELS
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8000, 8001, 8002}


def test_triton_hpa_scales_on_tritons_queue_metric(triton_objects):
    hpa = triton_objects[("HorizontalPodAutoscaler", "u2serve-triton")]
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == (
        "Deployment",
        "u2serve-triton",
    )
    (metric,) = hpa["spec"]["metrics"]
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    rules = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    rule = rules[metric["pods"]["metric"]["name"]]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]


def test_kserve_triton_inference_service_serves_the_repository_make_triton_repo_writes():
    (isvc,) = documents(KSERVE / "inferenceservice-triton.yaml")
    predictor, model = isvc["spec"]["predictor"], _model(isvc)
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "grpc-v2"
    assert model["storageUri"]
    assert model["ports"] == [{"name": "h2c", "containerPort": KSERVE_TRITON_GRPC_PORT, "protocol": "TCP"}]
    # Each variant's segment model and the network it calls by BLS, as handler.triton names them.
    args = model["args"]
    loaded = {a.removeprefix("--load-model=") for a in args if a.startswith("--load-model=")}
    assert loaded == {name for variant in VARIANTS for name in (variant, f"{variant}{NETWORK_SUFFIX}")}
    assert "--model-control-mode=explicit" in args
    # KServe puts the runtime's args first (the model store, the ports): none here may replace them.
    overriding = ("--model-store", "--model-repository", "--grpc-port", "--http-port")
    assert not [a for a in args if a.startswith(overriding)]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", TritonSettings().max_batch_size)
    # deploy/triton's image with its keys, restrictions and shared memory; resources as both other GPU pods.
    pod = documents(TRITON / "deployment.yaml")[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert model["image"] == container["image"] and model["env"] == container["env"]
    assert [a for a in args if "restricted" in a or "exit-on-error" in a] == [
        a for a in container["args"] if "restricted" in a or "exit-on-error" in a
    ]
    assert model["volumeMounts"] == container["volumeMounts"] and predictor["volumes"] == pod["volumes"]
    (torchserve,) = documents(KSERVE / "inferenceservice.yaml")
    assert model["resources"] == container["resources"] == _model(torchserve)["resources"]
    # That image's ENTRYPOINT serves its own /models; `command` is the NGC base image's entrypoint instead.
    text = TRITON_DOCKERFILE.read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:", text, re.M)
    assert re.search(r'^ENTRYPOINT \["tritonserver"', text, re.M)
    assert model["command"] == ["/opt/nvidia/nvidia_entrypoint.sh"]
