"""The Kubernetes and KServe manifests, validated offline: schemas (kubernetes-validate's bundled ones),
and the references between the objects that no schema checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DOCKERFILE = DEPLOY.parent / "Dockerfile"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests target
LABELS = {"app.kubernetes.io/name": "u2serve"}


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
    assert (
        kinds
        == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget"]
        + ["Service"] * 2
    )
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "u2serve" for d in built)


def test_deployment_runs_torchserve_on_a_gpu_with_probes_on_ping(objects):
    deployment = objects[("Deployment", "u2serve")]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"] == LABELS
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/ping" and get["port"] == "http", probe
    # The image's own entrypoint (Dockerfile) runs TorchServe in the foreground on the mounted config.
    assert "command" not in container and "args" not in container
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE.read_text(), re.M).group(1))
    assert "--foreground" in entrypoint
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == entrypoint[entrypoint.index("--ts-config") + 1]
    user = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.M)[-1]
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == user[0]
    config_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    config = properties(objects[("ConfigMap", config_volume["configMap"]["name"])]["data"]["config.properties"])
    assert config["inference_address"] == f"http://0.0.0.0:{ports['http']}"
    assert config["metrics_address"] == f"http://0.0.0.0:{ports['metrics']}"
    assert (config["grpc_inference_address"], int(config["grpc_inference_port"])) == ("0.0.0.0", ports["grpc"])
    assert config["ts_open_inference_protocol"] == "true" and config["enable_model_api"] == "false"
    assert config["model_store"] in DOCKERFILE.read_text()
    # Management stays on loopback inside the pod: nothing in the cluster can load or unload models.
    assert config["management_address"].startswith("http://127.0.0.1:")


def test_services_pdb_and_policy_select_the_pods(objects):
    ports = {
        p["name"] for p in objects[("Deployment", "u2serve")]["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    for name in ("u2serve", "u2serve-headless"):
        service = objects[("Service", name)]
        assert service["spec"]["selector"] == LABELS
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert objects[("Service", "u2serve-headless")]["spec"]["clusterIP"] == "None"
    assert objects[("PodDisruptionBudget", "u2serve")]["spec"]["selector"]["matchLabels"] == LABELS
    assert objects[("NetworkPolicy", "u2serve")]["spec"]["podSelector"]["matchLabels"] == LABELS


def test_hpa_scales_the_deployment_on_the_adapters_queue_metric(objects):
    hpa = objects[("HorizontalPodAutoscaler", "u2serve")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "u2serve")
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    exposed = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert metric["pods"]["metric"]["name"] in exposed
    metrics_yaml = yaml.safe_load((DEPLOY.parent / "metrics.yaml").read_text())
    counters = {m["name"] for m in metrics_yaml["ts_metrics"]["counter"]}
    assert {"ts_queue_latency_microseconds", "ts_inference_requests_total"} <= counters


def test_kserve_inference_service_speaks_grpc_v2_to_torchserve():
    (isvc,) = documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "grpc-v2"
    assert model["storageUri"]
    assert model["ports"] == [{"name": "h2c", "containerPort": 7070, "protocol": "TCP"}]
    # The predictor's model is a Container: check its fields with the Pod schema.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [
        {"name": "kserve-container", "image": "placeholder", "ports": model["ports"], "resources": model["resources"]}
    ]}}  # fmt: skip
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    config = properties((DEPLOY / "kserve" / "config.properties").read_text())
    assert config["ts_open_inference_protocol"] == "true"
    assert int(config["grpc_inference_port"]) == model["ports"][0]["containerPort"]
    assert config["model_store"] == "/mnt/models/model-store"


def test_a_bad_manifest_is_caught():
    bad = documents(DEPLOY / "k8s" / "hpa.yaml")[0]
    bad["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = {"ms": 100}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
