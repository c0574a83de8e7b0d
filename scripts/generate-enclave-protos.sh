#!/bin/sh
# Regenerates the Swift code of Protos/veil_enclave.proto into Sources/VeilServing/Generated/Enclave.
# The generated files are committed; CI and `make test` never run this. Needs protoc (Debian's
# protobuf-compiler) and the plugins protoc-gen-swift and protoc-gen-grpc-swift-2 built from
# the swift-protobuf and grpc-swift-protobuf versions Package.swift pins (PLUGINS=dir to say where).
set -eu
cd "$(dirname "$0")/.."
PLUGINS=${PLUGINS:-/work/tools/bin}
OUT=Sources/VeilServing/Generated/Enclave
mkdir -p "$OUT"
for p in protoc protoc-gen-swift protoc-gen-grpc-swift-2; do
  if [ "$p" = protoc ]; then command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }
  elif [ ! -x "$PLUGINS/$p" ]; then echo "$PLUGINS/$p not found: set PLUGINS to the folder holding it" >&2; exit 1; fi
done
protoc --proto_path=Protos \
  --plugin=protoc-gen-swift="$PLUGINS/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift="$PLUGINS/protoc-gen-grpc-swift-2" \
  --swift_out="$OUT" --swift_opt=Visibility=Public \
  --grpc-swift_out="$OUT" --grpc-swift_opt=Visibility=Public \
  veil_enclave.proto
echo "wrote $(ls "$OUT" | tr '\n' ' ')into $OUT"
