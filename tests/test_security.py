"""Security defaults against a real TorchServe: loopback only, tokens, no model API, private keys, gRPC TLS.

The SDK's view of refused tokens is in test_client_integration.py; here the raw gRPC and REST
answers are checked, so the defaults hold for any client.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import re
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import psutil
import pytest
from google.protobuf import empty_pb2
from PIL import Image

from tools.torchserve import Ports, Server, start
from u2net_client import AsyncU2NetClient, RetryPolicy, U2NetClient, U2NetError
from u2serve.apps.cli import main as cli_main
from u2serve.core._generated import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
REFUSED_TOKEN = "Token Authorization failed"
# A PEM block with a body: a real key or certificate, not a mention of its header in code or docs.
PEM_BLOCK = re.compile(rb"-{5}BEGIN ([A-Z0-9 ]+)-{5}\r?\n[A-Za-z0-9+/=]{40,}")
SECRET_SUFFIXES = {".pem", ".key", ".crt", ".p12", ".pfx", ".jks", ".keystore"}


def properties(path: Path) -> dict[str, str]:
    """A Java .properties file's keys and values (the subset our configs use: key=value, \\\\ escapes)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().replace("\\\\", "\\")
        # a later duplicate wins, as in java.util.Properties
    return values


def java_regex(pattern: str) -> re.Pattern[str]:
    """A Python regex for a Java one that uses \\Q..\\E quoting and otherwise the common syntax."""
    return re.compile(re.sub(r"\\Q(.*?)\\E", lambda m: re.escape(m.group(1)), pattern))


def rest(server: Server, port: int, path: str, method: str = "GET", key: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of a REST call, errors included."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers, data=b"")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def small_jpeg() -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", (64, 48), (20, 20, 20))
    image.paste((230, 200, 40), (16, 12, 48, 36))
    image.save(buf, "JPEG")
    return buf.getvalue()


# --- Everything on loopback ---------------------------------------------------------------------


def test_rendered_config_binds_loopback_and_locks_the_apis(server):
    cfg = properties(server.home / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(cfg[key]).hostname == "127.0.0.1", f"{key}={cfg[key]}"
    assert cfg["grpc_inference_address"] == cfg["grpc_management_address"] == "127.0.0.1"
    assert cfg["disable_token_authorization"] == "false"
    assert cfg["enable_model_api"] == "false"
    assert cfg.get("enable_envvars_config", "false") == "false", "TS_* variables must not override the config"


def test_every_listening_socket_of_the_server_is_on_loopback(server):
    frontend = psutil.Process(server.pid())
    listening = [
        conn.laddr
        for proc in (frontend, *frontend.children(recursive=True))
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    p = server.ports
    assert {p.inference, p.management, p.metrics, p.grpc_inference, p.grpc_management} <= {a.port for a in listening}
    assert all(ipv4(a.ip) == "127.0.0.1" for a in listening), listening


def ipv4(ip: str) -> str:
    """An address as IPv4 text; Java's sockets show 127.0.0.1 as the IPv4-mapped ::ffff:127.0.0.1."""
    address = ipaddress.ip_address(ip)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


# --- Tokens, at the raw gRPC and REST level ------------------------------------------------------


def test_grpc_inference_without_a_token_is_refused(server):
    request = inference_pb2.PredictionsRequest(model_name="u2netp", input={"data": small_jpeg()})
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer not-the-key"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Predictions(request, timeout=30, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert REFUSED_TOKEN in info.value.details()


def test_grpc_management_refuses_the_inference_key(server):
    keys = server.keys()
    request = management_pb2.ListModelsRequest(limit=10)
    with grpc.insecure_channel(server.grpc_management_target) as channel:
        stub = management_pb2_grpc.ManagementAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(request, timeout=30, metadata=(("authorization", f"Bearer {keys['inference']}"),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and REFUSED_TOKEN in info.value.details()
        reply = stub.ListModels(request, timeout=30, metadata=(("authorization", f"Bearer {keys['management']}"),))
        assert "u2netp" in reply.msg


def test_rest_refuses_missing_and_misplaced_keys(server):
    keys, p = server.keys(), server.ports
    # TorchServe 0.12 answers a refused token with 400 (not 401) and says why.
    status, body = rest(server, p.inference, "/predictions/u2netp", "POST")
    assert status == 400 and REFUSED_TOKEN in body, (status, body)
    status, body = rest(server, p.management, "/models", key=keys["inference"])
    assert status == 400 and REFUSED_TOKEN in body, (status, body)
    assert rest(server, p.management, "/models", key=keys["management"])[0] == 200


def test_model_registration_api_is_off(server):
    management, p = server.keys()["management"], server.ports
    # With the model API off, TorchServe's REST routes for it answer 405 Method Not Allowed.
    for method, path in (("POST", "/models?url=u2netp.mar"), ("DELETE", "/models/u2netp")):
        status, body = rest(server, p.management, path, method, key=management)
        assert status == 405 and "MethodNotAllowedException" in body, (method, path, status, body)
    with grpc.insecure_channel(server.grpc_management_target) as channel:
        stub = management_pb2_grpc.ManagementAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterModel(
                management_pb2.RegisterModelRequest(url="u2netp.mar"),
                timeout=30,
                metadata=(("authorization", f"Bearer {management}"),),
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "Model API disabled" in info.value.details()
    assert {m["modelName"] for m in server.management("/models")["models"]} >= {"u2netp"}


def test_allowed_urls_admit_only_archives_of_the_local_model_store(server, model_store):
    allowed = java_regex(properties(server.home / "config.properties")["allowed_urls"])
    store = model_store.resolve()
    assert allowed.fullmatch(f"file://{store}/u2netp.mar")
    for url in (
        "http://attacker.example/u2netp.mar",
        "https://attacker.example/u2netp.mar",
        "file:///tmp/model_store/u2netp.mar",
        f"file://{store}/sub/u2netp.mar",
        f"file://{store}/u2netp.zip",
        f"file://{store}x/u2netp.mar",
    ):
        assert not allowed.fullmatch(url), url


# --- Keys on disk --------------------------------------------------------------------------------


def test_key_file_is_readable_by_its_owner_only(server):
    assert stat.S_IMODE(server.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.home.stat().st_mode) == 0o700


def _repository_files() -> list[Path]:
    """Files git tracks, and those it would add (untracked, not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_keys_or_certificates_are_committed():
    offenders = []
    for path in _repository_files():
        if path.name == "key_file.json" or path.suffix.lower() in SECRET_SUFFIXES:
            offenders.append(f"{path.relative_to(ROOT)}: a key or certificate file by its name")
        elif path.is_file() and (found := PEM_BLOCK.search(path.read_bytes())):
            offenders.append(f"{path.relative_to(ROOT)}: PEM block {found.group(1).decode()}")
    assert not offenders, "secrets in the repository:\n" + "\n".join(offenders)
    # Where TorchServe writes the keys for `make serve` must stay ignored.
    assert subprocess.run(["git", "check-ignore", "-q", "var/key_file.json"], cwd=ROOT).returncode == 0


# --- gRPC over TLS -------------------------------------------------------------------------------


def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for localhost and 127.0.0.1: (ca.crt, server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("u2serve test CA", ca_key, "u2serve test CA", ca_key, ca=True)
    leaf = certificate("localhost", server_key, "u2serve test CA", ca_key, ca=False)
    paths = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    # PKCS#8: the only private key form grpc-java's Netty reads.
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> tuple[Path, Path, Path]:
    pytest.importorskip("cryptography", reason="the TLS tests make their certificates with `cryptography` ([dev])")
    return _make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, model_store, certificates):
    """A TorchServe serving u2netp with both gRPC APIs behind TLS; its home starts world-readable."""
    home = tmp_path_factory.mktemp("tls-server") / "home"
    home.mkdir(mode=0o755)
    _, cert, key = certificates
    srv = start(home, model_store, ["u2netp"], Ports.free(), tls=(cert, key))
    try:
        srv.wait_ready(timeout=600)
        yield srv
    finally:
        srv.stop()


def tls_client(srv: Server, **kw: object) -> U2NetClient:
    return U2NetClient(srv.grpc_target, srv.grpc_management_target, key_file=srv.key_file, timeout=120, **kw)


def test_tls_client_trusting_the_ca_gets_a_mask(tls_server, certificates):
    ca = certificates[0]
    with tls_client(tls_server, tls=True, ca_file=ca) as client:
        assert client.mask(small_jpeg()).image.size == (64, 48)
        assert client.describe("u2netp").name == "u2netp"  # the management API is behind TLS too

    async def run() -> tuple[int, int]:
        async with AsyncU2NetClient(
            tls_server.grpc_target, tls_server.grpc_management_target, key_file=tls_server.key_file,
            tls=True, root_certificates=ca.read_bytes(), tls_server_name="localhost",
        ) as client:  # fmt: skip
            return (await client.cutout(small_jpeg())).image.size

    assert asyncio.run(run()) == (64, 48)


@pytest.mark.parametrize("how", ["plaintext", "untrusted"])
def test_client_without_tls_or_the_ca_is_unavailable(tls_server, how):
    kw: dict[str, object] = {"tls": True} if how == "untrusted" else {}  # untrusted: the system's roots only
    with tls_client(tls_server, retry=RetryPolicy(max_attempts=1), **kw) as client:
        with pytest.raises(U2NetError) as info:
            client.mask(small_jpeg(), timeout=10)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(tls_server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as raw:
            inference_pb2_grpc.InferenceAPIsServiceStub(channel).Ping(empty_pb2.Empty(), timeout=10)
        assert raw.value.code() == grpc.StatusCode.UNAVAILABLE


def test_command_line_over_tls(tls_server, certificates, capsys):
    common = ["--target", tls_server.grpc_target, "--management-target", tls_server.grpc_management_target,
              "--key-file", str(tls_server.key_file), "--timeout", "30"]  # fmt: skip
    assert cli_main(["ping", *common, "--ca-file", str(certificates[0])]) == 0
    assert "healthy" in capsys.readouterr().out


def test_launcher_makes_a_fresh_home_and_its_key_file_private(tls_server):
    assert stat.S_IMODE(tls_server.home.stat().st_mode) == 0o700
    assert stat.S_IMODE(tls_server.key_file.stat().st_mode) == 0o600
    cfg = properties(tls_server.home / "config.properties")
    assert cfg["enable_grpc_ssl"] == "true" and Path(cfg["private_key_file"]).is_absolute()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"ca_file": "ca.crt"}, r"apply to TLS: pass tls=True"),
        ({"tls_server_name": "localhost"}, r"applies to TLS: pass tls=True"),
        ({"tls": True, "ca_file": "ca.crt", "root_certificates": b"x"}, r"ca_file= or root_certificates=, not both"),
        ({"tls": True, "ca_file": "no-such.crt"}, r"ca_file='no-such.crt': No such file"),
        ({"tls": True, "ca_file": "not-pem.crt"}, r"holds no PEM certificate"),
        ({"tls": True, "channel_credentials": grpc.ssl_channel_credentials()}, r"not both"),
    ],
)
@pytest.mark.parametrize("client_type", [U2NetClient, AsyncU2NetClient])
def test_tls_options_that_cannot_work_are_refused_at_once(tmp_path, monkeypatch, client_type, kw, match):
    monkeypatch.chdir(tmp_path)
    Path("not-pem.crt").write_text("hello\n")

    with pytest.raises(U2NetError, match=match) as info:
        client_type("127.0.0.1:1", "127.0.0.1:2", token="t", management_token="m", **kw)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
