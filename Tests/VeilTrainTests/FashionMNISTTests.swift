import Foundation
import VeilData
import VeilTensor
import XCTest

import VeilTrain

/// Issue 5: training a classifier works — a small CNN trained on Fashion-MNIST (Debian's
/// `dataset-fashion-mnist`) reaches at least 88 % on the 10,000 test images.
final class FashionMNISTTests: XCTestCase {
  static let folder = URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist")

  /// Three 3×3 convolutions with BatchNorm and ReLU (28² → 14² → 7²), then one Linear layer.
  final class SmallCNN: Layer {
    let conv1, conv2, conv3: Conv2d
    let bn1, bn2, bn3: BatchNorm
    let fc: Linear

    init(seed: UInt64) {
      var g = SeededGenerator(seed: seed)
      let he = Initializer.kaimingNormal(negativeSlope: 0)
      conv1 = Conv2d("conv1", inChannels: 1, outChannels: 16, kernel: 3, padding: 1, bias: false, initializer: he, generator: &g)
      conv2 = Conv2d("conv2", inChannels: 16, outChannels: 32, kernel: 3, stride: 2, padding: 1, bias: false, initializer: he, generator: &g)
      conv3 = Conv2d("conv3", inChannels: 32, outChannels: 32, kernel: 3, stride: 2, padding: 1, bias: false, initializer: he, generator: &g)
      bn1 = BatchNorm("bn1", channels: 16)
      bn2 = BatchNorm("bn2", channels: 32)
      bn3 = BatchNorm("bn3", channels: 32)
      fc = Linear("fc", inFeatures: 32 * 7 * 7, outFeatures: 10, generator: &g)
    }

    var norms: [BatchNorm] { [bn1, bn2, bn3] }
    var parameters: [Variable] { conv1.parameters + bn1.parameters + conv2.parameters + bn2.parameters + conv3.parameters + bn3.parameters + fc.parameters }

    func callAsFunction(_ x: Variable) throws -> Variable {
      var h = relu(try bn1(try conv1(x)))
      h = relu(try bn2(try conv2(h)))
      h = relu(try bn3(try conv3(h)))
      return try fc(try flatten(h))
    }
  }

  /// Images `indices` as a [B, 1, 28, 28] batch scaled to [0, 1] and standardised with
  /// Fashion-MNIST's mean and deviation.
  func batch(_ images: IDXImages, _ indices: ArraySlice<Int>) -> Tensor {
    let n = images.rows * images.columns
    return Tensor(shape: [indices.count, 1, images.rows, images.columns]) { d in
      for (b, i) in indices.enumerated() {
        images.image(i).pixels.withUnsafeBufferPointer { src in
          for p in 0..<n { d[b * n + p] = (Float(src[p]) / 255 - 0.286) / 0.353 }
        }
      }
    }
  }

  func load(_ prefix: String) throws -> (IDXImages, [Int]) {
    let images = Self.folder.appendingPathComponent("\(prefix)-images-idx3-ubyte.gz")
    let labels = Self.folder.appendingPathComponent("\(prefix)-labels-idx1-ubyte.gz")
    guard FileManager.default.fileExists(atPath: images.path) else {
      XCTFail("\(images.path) is missing: install Debian's dataset-fashion-mnist (scripts/install-deps.sh does)")
      throw CocoaError(.fileNoSuchFile)
    }
    let set = try DataSet.idx(images: images, labels: labels)
    return (try IDXImages(url: images), set.samples.map(\.label))
  }

  func testSmallCNNReachesEightyEightPercent() throws {
    let (trainImages, trainLabels) = try load("train")
    let (testImages, testLabels) = try load("t10k")
    XCTAssertEqual(trainLabels.count, 60_000)
    XCTAssertEqual(testLabels.count, 10_000)
    let net = SmallCNN(seed: 1)
    let adam = try Adam(parameters: net.parameters, learningRate: 2e-3)
    let batchSize = 64
    let epochs = 2
    var order = Array(0..<trainLabels.count)
    var rng = SeededGenerator(seed: 2)
    let start = Date()
    for epoch in 0..<epochs {
      order.shuffle(using: &rng)
      var running = 0.0
      for (step, from) in stride(from: 0, to: order.count - batchSize + 1, by: batchSize).enumerated() {
        let idx = order[from..<from + batchSize]
        adam.zeroGradients()
        let loss = try softmaxCrossEntropy(try net(Variable(batch(trainImages, idx))), labels: idx.map { trainLabels[$0] })
        try loss.backward()
        try adam.step()
        running += Double(loss.value.scalars[0])
        if (step + 1) % 300 == 0 {
          print(String(format: "epoch %d step %d: mean loss %.4f", epoch + 1, step + 1, running / 300))
          running = 0
        }
      }
    }
    let seconds = Date().timeIntervalSince(start)
    print(String(format: "trained %d epochs in %.1f s (%.0f images/s, %d threads)", epochs, seconds,
      Double(epochs * trainLabels.count) / seconds, Engine.shared.threads))

    for bn in net.norms { bn.training = false }
    var correct = 0
    for from in stride(from: 0, to: testLabels.count, by: 500) {
      let idx = Array(from..<min(from + 500, testLabels.count))
      let logits = try net(Variable(batch(testImages, idx[...]))).value
      logits.withUnsafeBuffer { y in
        for (b, i) in idx.enumerated() {
          let row = Array(y[b * 10..<(b + 1) * 10])
          if row.indices.max(by: { row[$0] < row[$1] }) == testLabels[i] { correct += 1 }
        }
      }
    }
    let accuracy = Double(correct) / Double(testLabels.count)
    print(String(format: "Fashion-MNIST test accuracy %.2f %%", 100 * accuracy))
    XCTAssertGreaterThanOrEqual(accuracy, 0.88)
  }
}
