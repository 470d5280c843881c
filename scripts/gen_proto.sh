#!/usr/bin/env bash
# Regenerates the contract's Python code (messages, stubs, type stubs) from proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -f gpucp/v1/*_pb2*.py gpucp/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -Iproto \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  proto/gpucp/v1/*.proto
