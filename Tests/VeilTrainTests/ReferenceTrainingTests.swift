import Foundation
import VeilGraph
import VeilTensor
import VeilTestSupport
import XCTest

import VeilTrain

/// Training through the `TrainingBackend` seam on a second backend: the same graph trained for
/// a few Adam steps on oneDNN and on `ReferenceBackend` (plain loops) gives the same losses and
/// weights, a frozen head the same input gradient, and a transposed convolution the same three
/// passes. VeilTrain is not told which backend it runs on beyond the `backend:` it is given.
final class ReferenceTrainingTests: XCTestCase {
  private func close(_ a: Tensor, _ b: Tensor, _ what: String, tolerance: Float = 1e-4, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, what, file: file, line: line)
    // Relative to the tensor's peak: gradients are small, an absolute floor would hide a scale error.
    let scale = max(b.scalars.map(abs).max() ?? 0, 1e-12)
    let err = zip(a.scalars, b.scalars).map { abs($0 - $1) }.max() ?? 0
    XCTAssertLessThanOrEqual(err, tolerance * scale, "\(what): max |difference| \(err) at scale \(scale)", file: file, line: line)
  }

  /// Losses of three steps, the first step's gradients and the trained parameters, on `backend`.
  /// (Adam's step is blind to a gradient's scale, so the gradients are compared themselves.)
  private func train(on backend: any TrainingBackend) throws -> (losses: [Float], gradients: [Tensor], parameters: [Tensor]) {
    let model = try GraphModel(try GraphModelTests.smallGraph(seed: 21), backend: backend)
    let adam = try Adam(parameters: model.parameters, learningRate: 1e-2, backend: backend)
    var r = SeededGenerator(seed: 22)
    let x = Tensor.randomNormal(shape: [2, 2, 6, 6], generator: &r)
    let target = Tensor.randomUniform(shape: [2, 3], low: 0, high: 1, generator: &r)
    var losses: [Float] = []
    var gradients: [Tensor] = []
    for _ in 0..<3 {
      adam.zeroGradients()
      let loss = try mseLoss(try model(Variable(x)), target)
      try loss.backward()
      if gradients.isEmpty { gradients = try model.parameters.map { try XCTUnwrap($0.grad, $0.name) } }
      try adam.step()
      losses.append(loss.value.scalars[0])
    }
    return (losses, gradients, model.parameters.map(\.value))
  }

  func testTrainingAGraphOnThePlainLoopBackendAgreesWithOneDNN() throws {
    let (want, wantGradients, wantParameters) = try train(on: DNNLBackend.shared)
    let reference = ReferenceBackend()
    let (got, gotGradients, gotParameters) = try train(on: reference)
    // The graph's Gemm, forward and backward, ran on the backend the model was given (the
    // process-wide training backend is oneDNN's).
    XCTAssertGreaterThanOrEqual(reference.matrixProducts, 3 * 3, "three steps, each a forward product and two gradients")
    for (k, (g, w)) in zip(got, want).enumerated() { XCTAssertEqual(g, w, accuracy: 1e-5 * max(abs(w), 1), "loss at step \(k + 1)") }
    XCTAssertNotEqual(want.first, want.last, "the steps changed the loss (the comparison is of training, not of one forward)")
    XCTAssertEqual(gotGradients.count, wantGradients.count)
    for (k, (g, w)) in zip(gotGradients, wantGradients).enumerated() { close(g, w, "gradient of parameter \(k) at step 1") }
    XCTAssertEqual(gotParameters.count, wantParameters.count)
    for (k, (g, w)) in zip(gotParameters, wantParameters).enumerated() { close(g, w, "parameter \(k) after three steps") }
  }

  func testInputGradientThroughAFrozenHeadAgrees() throws {
    var r = SeededGenerator(seed: 23)
    let x = Tensor.randomNormal(shape: [2, 2, 6, 6], generator: &r)
    let seed = Tensor.randomNormal(shape: [2, 3], generator: &r)
    var grads: [Tensor] = []
    for backend in [DNNLBackend.shared, ReferenceBackend()] as [any TrainingBackend] {
      let head = try GraphModel(frozen: try GraphModelTests.smallGraph(seed: 24), backend: backend)
      let v = Variable(x, requiresGrad: true)
      try head(v).backward(seed: seed)
      grads.append(try XCTUnwrap(v.grad))
    }
    close(grads[1], grads[0], "∂/∂input")
  }

  /// The matrix product every Gemm, Linear and MatMul of the autograd layer runs: oneDNN's
  /// SGEMM against the plain loops, each way of transposing, accumulating into what c holds.
  func testMatrixProductsAgree() throws {
    var r = SeededGenerator(seed: 29)
    let (m, k, n) = (7, 13, 5)
    let a = Tensor.randomNormal(shape: [m * k], generator: &r).scalars
    let b = Tensor.randomNormal(shape: [k * n], generator: &r).scalars
    let start = Tensor.randomNormal(shape: [m * n], generator: &r).scalars
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
      var results: [[Float]] = []
      for backend in [DNNLBackend.shared, ReferenceBackend()] as [any TrainingBackend] {
        var c = start
        backend.multiplyAccumulate(a, transposeA: ta, b, transposeB: tb, into: &c, m: m, k: k, n: n, alpha: 0.5)
        results.append(c)
      }
      // Against a product written out here: a as [m×k] or its transpose's storage, and so b.
      var want = start
      for i in 0..<m {
        for j in 0..<n {
          var s: Float = 0
          for t in 0..<k { s += (ta ? a[t * m + i] : a[i * k + t]) * (tb ? b[j * k + t] : b[t * n + j]) }
          want[i * n + j] += 0.5 * s
        }
      }
      for (name, got) in zip(["oneDNN", "reference"], results) {
        let err = zip(got, want).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThan(err, 1e-5, "\(name), transposeA \(ta), transposeB \(tb)")
      }
    }
  }

  func testTransposedConvolutionPassesAgree() throws {
    var r = SeededGenerator(seed: 25)
    let x = Tensor.randomNormal(shape: [2, 4, 5, 5], generator: &r)
    let dy = Tensor.randomNormal(shape: [2, 6, 10, 10], generator: &r)
    var results: [[Tensor]] = []
    for backend in [DNNLBackend.shared, ReferenceBackend()] as [any TrainingBackend] {
      var g = SeededGenerator(seed: 26)
      // pix2pix's upsampling layer: kernel 4, stride 2, padding 1, in 2 groups here.
      let up = Conv2d(
        "up", inChannels: 4, outChannels: 6, kernel: 4, stride: 2, padding: 1, transposed: true, generator: &g, backend: backend)
      let v = Variable(x, requiresGrad: true)
      let w = Variable(up.weight.value, requiresGrad: true)
      let b = Variable(Tensor.randomNormal(shape: [6], generator: &g), requiresGrad: true)
      var spec = up.spec
      spec.groups = 2
      let grouped = Variable(Tensor.randomNormal(shape: [4, 3, 4, 4], generator: &g), requiresGrad: true)
      let y = try convolution(v, w, b, up.spec, backend: backend)
      try y.backward(seed: dy)
      let yg = try convolution(v, grouped, nil, spec, backend: backend)
      try yg.backward(seed: dy)
      results.append([y.value, yg.value, try XCTUnwrap(v.grad), try XCTUnwrap(w.grad), try XCTUnwrap(b.grad), try XCTUnwrap(grouped.grad)])
    }
    for (k, what) in ["output", "grouped output", "∂/∂input (both)", "∂/∂weights", "∂/∂bias", "grouped ∂/∂weights"].enumerated() {
      close(results[1][k], results[0][k], what)
    }
  }
}
