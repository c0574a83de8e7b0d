// swift-tools-version:6.0
// Veil: private inference of split DNNs across a TEE and an untrusted accelerator.
// Modules follow the layers of DESIGN.md; a lower layer never imports a higher one.
import PackageDescription

// Kernels are built for x86-64-v3 (AVX2, FMA) at least, as the project requires.
let kernelCFlags: [CSetting] = [.unsafeFlags(["-march=x86-64-v3", "-O3"])]
let kernelSwiftFlags: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-march=x86-64-v3"])]

let package = Package(
  name: "Veil",
  platforms: [.macOS(.v14)],
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
    .target(name: "VeilModels", dependencies: ["VeilTensor", "VeilGraph"]),
    // Evidence, verification, the attested channel, sealing, and the TEE cost model:
    // independent of the engine.
    .target(
      name: "VeilTEE",
      dependencies: [
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ]
    ),
    // Profiler, planner and reports: drives the engine, the cost model and the real crypto.
    .target(
      name: "VeilPlanning",
      dependencies: ["VeilTensor", "VeilGraph", "VeilTEE", .product(name: "Crypto", package: "swift-crypto")]),
    .target(name: "VeilData", dependencies: ["VeilTensor", "CImageCodecs"], swiftSettings: kernelSwiftFlags),
    // Autograd, layers, losses, optimisers, checkpoints: the graph layer's training engine.
    .target(name: "VeilTrain", dependencies: ["VeilTensor", "VeilFormats"], swiftSettings: kernelSwiftFlags),
    // SSIM/PSNR and (later) the inversion attackers: scores images, never imports serving or planning.
    .target(name: "VeilPrivacy", dependencies: ["VeilTensor", "VeilData"], swiftSettings: kernelSwiftFlags),
    // Test-only: ONNX Runtime references and tolerances shared by the numerical test targets.
    // Never a dependency of `veil` or of a product.
    .target(name: "VeilTestSupport", dependencies: ["VeilTensor", "VeilGraph", "VeilFormats"]),
    .executableTarget(
      name: "veil",
      dependencies: [
        "VeilTensor", "VeilGraph", "VeilFormats", "VeilModels", "VeilData", "VeilTEE", "VeilPlanning", "VeilPrivacy",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "X509", package: "swift-certificates"),
      ]
    ),
    .testTarget(name: "VeilCLITests", dependencies: ["VeilFormats", "VeilTensor", "VeilGraph", "VeilModels", "VeilData"]),
    .testTarget(
      name: "VeilDataTests", dependencies: ["VeilData", "VeilTensor", "VeilFormats", "VeilGraph", "VeilModels", "VeilTestSupport"]),
    .testTarget(name: "VeilTEETests", dependencies: ["VeilTEE"]),
    .testTarget(name: "VeilTensorTests", dependencies: ["VeilTensor"]),
    .testTarget(name: "VeilGraphTests", dependencies: ["VeilGraph", "VeilFormats", "VeilTestSupport"]),
    .testTarget(name: "VeilFormatsTests", dependencies: ["VeilFormats", "VeilTestSupport"]),
    .testTarget(name: "VeilPlanningTests", dependencies: ["VeilPlanning", "VeilTEE", "VeilModels", "VeilGraph", "VeilTensor"]),
    .testTarget(name: "VeilTrainTests", dependencies: ["VeilTrain", "VeilTensor", "VeilFormats", "VeilData"]),
    .testTarget(name: "VeilPrivacyTests", dependencies: ["VeilPrivacy", "VeilData", "VeilTensor", "VeilTestSupport"]),
    .testTarget(name: "VeilModelsTests", dependencies: ["VeilModels", "VeilFormats", "VeilTestSupport"]),
  ]
)
