"""make k8s-test's render of deploy/k8s for podman kube play, checked without podman."""

from __future__ import annotations

import pytest
import yaml

from tools import k8s_test

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")


def test_the_rendered_deployment_is_deploy_k8s_with_the_local_image_loopback_ports_and_host_folders(tmp_path):
    tmp_path.chmod(0o755)
    out = k8s_test.render("localhost/u2serve:cpu", "u2serve-k8s-test-1", {"http": 43210, "grpc": 43211}, tmp_path,
                          "the-key")  # fmt: skip
    deployment = yaml.safe_load(out.read_text())
    kubernetes_validate.validate(deployment, "1.30.0", strict=True)
    assert deployment["spec"]["replicas"] == 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localhost/u2serve:cpu"
    # The gateway's HTTP and gRPC ports, each on its own loopback port.
    assert [(p["name"], p["hostIP"], p["hostPort"]) for p in container["ports"]] == [
        ("http", "127.0.0.1", 43210), ("grpc", "127.0.0.1", 43211)
    ]  # fmt: skip
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert all("hostPath" in v for v in volumes.values()) and not any("subPath" in m for m in container["volumeMounts"])
    # The caller-keys path the container is told resolves, inside the mounted folder, to the generated key.
    env = {e["name"]: e["value"] for e in container["env"]}
    (keys_mount,) = [m for m in container["volumeMounts"] if env["U2SERVE_CALLER_KEYS"].startswith(m["mountPath"])]
    folder = volumes[keys_mount["name"]]["hostPath"]["path"]
    inside = env["U2SERVE_CALLER_KEYS"].removeprefix(keys_mount["mountPath"]).lstrip("/")
    assert (tmp_path / folder / inside).read_text() == "the-key\n"
    (config_mount,) = [m for m in container["volumeMounts"] if m["mountPath"].endswith(".properties")]
    assert "127.0.0.1" in (tmp_path / volumes[config_mount["name"]]["hostPath"]["path"]).read_text()


def test_a_rotation_is_the_kubelets_swap_of_the_folders_data_link(tmp_path):
    k8s_test.write_secret_folder(tmp_path, "old\n", 1)
    first = (tmp_path / "keys").resolve()
    k8s_test.write_secret_folder(tmp_path, "old\nnew\n", 2)
    assert (tmp_path / "keys").read_text() == "old\nnew\n" and (tmp_path / "keys").resolve() != first
    assert (tmp_path / "keys").is_symlink() and (tmp_path / "..data").is_symlink()
