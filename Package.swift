// swift-tools-version:6.0
// Veil: private inference of split DNNs across a TEE and an untrusted accelerator.
// Modules follow the layers of DESIGN.md; a lower layer never imports a higher one.
import PackageDescription

// Kernels are built for x86-64-v3 (AVX2, FMA) at least, as the project requires.
let kernelCFlags: [CSetting] = [.unsafeFlags(["-march=x86-64-v3", "-O3", "-fno-math-errno"])]
let kernelSwiftFlags: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-march=x86-64-v3"])]

let package = Package(
  name: "Veil",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "veil", targets: ["veil"]),
    .library(name: "VeilGraph", targets: ["VeilGraph"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    // TEE: ECDSA, X25519, HKDF, AES-GCM; X.509 chains and CRLs for DCAP collateral.
    .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
    .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    // Serving: the KServe v2 protocol over gRPC (generated code is committed; protoc never runs
    // in CI), logs, metrics with a Prometheus endpoint, service lifecycles.
    .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    // Already in the graph through grpc-swift's transport: NIOHTTP1 serves the Prometheus text.
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
  ],
  targets: [
    // System libraries: oneDNN 2.6 from Debian's libdnnl-dev, plus a few C helpers that read
    // its descriptor structs and run the small plain-layout kernels oneDNN does not offer.
    .target(
      name: "CDNNL",
      cSettings: kernelCFlags,
      linkerSettings: [.linkedLibrary("dnnl"), .linkedLibrary("gomp"), .linkedLibrary("m")]
    ),
    // Image codecs: Debian's libpng, libjpeg-turbo and zlib, with the setjmp error handling
    // that Swift cannot do.
    .target(
      name: "CImageCodecs",
      cSettings: kernelCFlags,
      linkerSettings: [.linkedLibrary("png"), .linkedLibrary("jpeg"), .linkedLibrary("z")]
    ),
    .target(name: "VeilTensor", dependencies: ["CDNNL"], swiftSettings: kernelSwiftFlags),
    .target(name: "VeilGraph", dependencies: ["VeilTensor"], swiftSettings: kernelSwiftFlags),
    .target(name: "VeilFormats", dependencies: ["VeilTensor", "VeilGraph"]),
    .target(name: "VeilModels", dependencies: ["VeilTensor", "VeilGraph", "VeilFormats"]),
    // Evidence, verification, the attested channel, sealing, and the TEE cost model:
    // independent of the engine.
    .target(
      name: "VeilTEE",
      dependencies: [
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "_CryptoExtras", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ]
    ),
    // The enclave service, the accelerator service (KServe v2 / Triton gRPC) and their clients.
    .target(
      name: "VeilServing",
      dependencies: [
        "VeilTensor", "VeilGraph", "VeilFormats", "VeilTEE", "VeilData",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "CoreMetrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ],
      swiftSettings: kernelSwiftFlags
    ),
    // Profiler, planner and reports: drives the engine, the cost model and the real crypto.
    .target(
      name: "VeilPlanning",
      dependencies: [
        "VeilTensor", "VeilGraph", "VeilFormats", "VeilModels", "VeilData", "VeilTEE", "VeilServing", "VeilPrivacy",
        .product(name: "Crypto", package: "swift-crypto"),
      ]),
    .target(name: "VeilData", dependencies: ["VeilTensor", "CImageCodecs"], swiftSettings: kernelSwiftFlags),
    // Autograd, layers, losses, optimisers, checkpoints: the training layer, above graph and
    // formats (it reads and writes safetensors checkpoints); privacy builds on it.
    .target(name: "VeilTrain", dependencies: ["VeilTensor", "VeilGraph", "VeilFormats"], swiftSettings: kernelSwiftFlags),
    // SSIM/PSNR, features at a cut, the inversion attackers and the sweep: never imports serving,
    // TEE or planning.
    .target(
      name: "VeilPrivacy",
      dependencies: [
        "VeilTensor", "VeilData", "VeilGraph", "VeilTrain", "VeilFormats", "VeilModels",
      ],
      swiftSettings: kernelSwiftFlags),
    // Test-only: ONNX Runtime references and tolerances shared by the numerical test targets.
    // Never a dependency of `veil` or of a product.
    .target(
      name: "VeilTestSupport",
      dependencies: [
        "VeilTensor", "VeilGraph", "VeilFormats", "VeilTEE",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "_CryptoExtras", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ]),
    .executableTarget(
      name: "veil",
      dependencies: [
        "VeilTensor", "VeilGraph", "VeilFormats", "VeilModels", "VeilData", "VeilTEE", "VeilPlanning", "VeilPrivacy", "VeilServing",
        "VeilTrain",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    .testTarget(name: "VeilCLITests", dependencies: ["VeilFormats", "VeilTensor", "VeilGraph", "VeilModels", "VeilData"]),
    .testTarget(
      name: "VeilDataTests", dependencies: ["VeilData", "VeilTensor", "VeilFormats", "VeilGraph", "VeilModels", "VeilTestSupport"]),
    .testTarget(
      name: "VeilTEETests",
      dependencies: [
        "VeilTEE", "VeilTestSupport",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
      ]),
    .testTarget(name: "VeilTensorTests", dependencies: ["VeilTensor", "CDNNL"]),
    .testTarget(name: "VeilGraphTests", dependencies: ["VeilGraph", "VeilTensor", "VeilFormats", "VeilTestSupport"]),
    .testTarget(name: "VeilFormatsTests", dependencies: ["VeilFormats", "VeilGraph", "VeilTensor", "VeilTestSupport"]),
    .testTarget(
      name: "VeilPlanningTests",
      dependencies: [
        "VeilPlanning", "VeilServing", "VeilTEE", "VeilModels", "VeilGraph", "VeilTensor", "VeilData", "VeilFormats", "VeilPrivacy",
        "VeilTestSupport",
      ]),
    .testTarget(
      name: "VeilTrainTests",
      dependencies: ["VeilTrain", "VeilTensor", "VeilGraph", "VeilFormats", "VeilData", "VeilModels", "VeilTestSupport"]),
    .testTarget(
      name: "VeilPrivacyTests",
      dependencies: ["VeilPrivacy", "VeilData", "VeilTensor", "VeilGraph", "VeilTrain", "VeilModels", "VeilFormats", "VeilTestSupport"]),
    .testTarget(
      name: "VeilServingTests",
      dependencies: [
        "VeilServing", "VeilTEE", "VeilModels", "VeilGraph", "VeilTensor", "VeilFormats", "VeilData", "VeilTestSupport",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]),
    .testTarget(name: "VeilModelsTests", dependencies: ["VeilModels", "VeilGraph", "VeilTensor", "VeilFormats", "VeilTestSupport"]),
  ]
)

// The fuzzing harness (Fuzz/, `make fuzz`): one libFuzzer executable over every decoder. It is
// declared only when VEIL_FUZZ is set, so `swift build` and `swift build --build-tests` never
// compile it; `make fuzz` sets it and builds into .build-fuzz with -sanitize=fuzzer.
if Context.environment["VEIL_FUZZ"] != nil {
  package.targets.append(
    .executableTarget(
      name: "veil-fuzz",
      dependencies: [
        "VeilFormats", "VeilData", "VeilTEE", "VeilGraph", "VeilTensor", "VeilTestSupport", "VeilServing",
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ],
      path: "Fuzz/Sources"))
}
