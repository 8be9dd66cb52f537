#!/bin/bash
# The container's command, under `tini -g` (PID 1, which sends stop signals to this whole process group):
# TorchServe, then, once it has written this start's key file, the web gateway, which accepts that key and
# calls TorchServe over gRPC with it. When either ends the other is stopped and the container exits with
# the first one's status, so a restart policy brings both back.
set -uo pipefail

# A restarted container keeps its files: the gateway must not start on the previous run's keys.
rm -f "${U2SERVE_KEY_FILE}"
torchserve --start --foreground --ncs --ts-config "${U2SERVE_CONFIG}" &
serving=$!
gateway=""

stop() {
    kill -TERM "${serving}" ${gateway:+"${gateway}"} 2>/dev/null
    wait
}
trap 'stop; exit 143' TERM INT

# In Kubernetes (deploy/k8s) the gateway accepts the keys of a mounted Secret ($U2SERVE_CALLER_KEYS) and
# TorchServe, on the pod's loopback only, runs without token authorization: no key file to wait for.
keys=()
if [[ -z "${U2SERVE_CALLER_KEYS:-}" ]]; then
    until [[ -s "${U2SERVE_KEY_FILE}" ]]; do
        if ! kill -0 "${serving}" 2>/dev/null; then
            wait "${serving}"
            exit $?
        fi
        sleep 0.2
    done
    keys=(--key-file "${U2SERVE_KEY_FILE}")
fi
# With $U2SERVE_GRPC_PORT (deploy/k8s) the gateway serves TorchServe's gRPC inference API there too, behind the
# same keys: in the pod TorchServe's own ports are on loopback, so that is the SDK's way in.
grpc=()
if [[ -n "${U2SERVE_GRPC_PORT:-}" ]]; then
    grpc=(--grpc-port "${U2SERVE_GRPC_PORT}")
fi
python -m u2serve.web --host 0.0.0.0 --port "${U2SERVE_WEB_PORT}" "${keys[@]}" "${grpc[@]}" &
gateway=$!

wait -n  # either one (bash 4.3+: the GPU base image is Ubuntu)
status=$?
stop
exit "${status}"
