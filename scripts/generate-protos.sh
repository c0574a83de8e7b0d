#!/usr/bin/env bash
# Regenerates the Swift code of the KServe v2 and gRPC health protos into Sources/VeilServing/Generated (messages with
# protoc-gen-swift, the gRPC service with protoc-gen-grpc-swift-2). The generated code is
# committed: neither make nor CI runs this. Needs protoc (Debian: protobuf-compiler) and the two
# plugins, found on PATH or in PLUGIN_DIR (default /work/tools/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
plugins=${PLUGIN_DIR:-/work/tools/bin}
swift_plugin=$(command -v protoc-gen-swift || echo "$plugins/protoc-gen-swift")
grpc_plugin=$(command -v protoc-gen-grpc-swift-2 || echo "$plugins/protoc-gen-grpc-swift-2")
for p in "$swift_plugin" "$grpc_plugin"; do
  [ -x "$p" ] || { echo "generate-protos: plugin $p not found; set PLUGIN_DIR or put it on PATH" >&2; exit 1; }
done
command -v protoc >/dev/null || { echo "generate-protos: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
out=Sources/VeilServing/Generated
mkdir -p "$out"
protoc --proto_path=Protos \
  --plugin=protoc-gen-swift="$swift_plugin" --swift_out="$out" --swift_opt=Visibility=Public \
  --plugin=protoc-gen-grpc-swift-2="$grpc_plugin" --grpc-swift-2_out="$out" \
  --grpc-swift-2_opt=Visibility=Public,Client=true,Server=true \
  Protos/grpc_predict_v2.proto Protos/grpc_health_v1.proto
echo "generated: $(ls "$out" | tr '\n' ' ')"
