// swift-tools-version:6.0
// The cost of a gRPC round trip on this machine, unary call against a message on an open
// bidirectional stream, with the transport settings of Veil's servers. A package of its own, so
// that neither `make` nor CI builds it: `swift build -c release --package-path bench/grpc-round-trip`.
import PackageDescription

let package = Package(
  name: "grpc-round-trip",
  platforms: [.macOS(.v15)],
  dependencies: [
    .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
  ],
  targets: [
    .executableTarget(
      name: "GRPCRoundTrip",
      dependencies: [
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]
    )
  ]
)
