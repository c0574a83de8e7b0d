import VeilTensor

/// Node-building conveniences for code that writes a model by hand (the zoo, tests). Each
/// returns the new node's output value; weights become initializers named `<name>.weight`,
/// `<name>.bias`, and so on, as PyTorch names a module's parameters.
extension Graph {
  public mutating func conv(
    _ x: ValueID, weight: Tensor, bias: Tensor? = nil, _ attributes: ConvAttributes, name: String
  ) -> ValueID {
    weighted(.conv(attributes), x, weight: weight, bias: bias, name: name)
  }

  public mutating func convTranspose(
    _ x: ValueID, weight: Tensor, bias: Tensor? = nil, _ attributes: ConvAttributes, name: String
  ) -> ValueID {
    weighted(.convTranspose(attributes), x, weight: weight, bias: bias, name: name)
  }

  /// Inference-mode batch normalization with its four parameter vectors.
  public mutating func batchNorm(
    _ x: ValueID, scale: Tensor, bias: Tensor, mean: Tensor, variance: Tensor, epsilon: Float = 1e-5, name: String
  ) -> ValueID {
    let ins = [
      x, addInitializer(name: name + ".weight", scale), addInitializer(name: name + ".bias", bias),
      addInitializer(name: name + ".running_mean", mean), addInitializer(name: name + ".running_var", variance),
    ]
    return addNode(.batchNormalization(epsilon: epsilon), name: name, inputs: ins)[0]
  }

  public mutating func activation(_ x: ValueID, _ a: Activation, name: String) -> ValueID {
    addNode(.activation(a), name: name, inputs: [x])[0]
  }

  public mutating func maxPool(_ x: ValueID, _ p: PoolAttributes, name: String) -> ValueID {
    addNode(.maxPool(p), name: name, inputs: [x])[0]
  }

  public mutating func averagePool(_ x: ValueID, _ p: PoolAttributes, name: String) -> ValueID {
    addNode(.averagePool(p), name: name, inputs: [x])[0]
  }

  public mutating func globalAveragePool(_ x: ValueID, name: String) -> ValueID {
    addNode(.globalAveragePool, name: name, inputs: [x])[0]
  }

  public mutating func binary(_ kind: BinaryKind, _ a: ValueID, _ b: ValueID, name: String) -> ValueID {
    addNode(.binary(kind), name: name, inputs: [a, b])[0]
  }

  public mutating func add(_ a: ValueID, _ b: ValueID, name: String) -> ValueID { binary(.add, a, b, name: name) }
  public mutating func mul(_ a: ValueID, _ b: ValueID, name: String) -> ValueID { binary(.mul, a, b, name: name) }

  public mutating func concat(_ xs: [ValueID], axis: Int, name: String) -> ValueID {
    addNode(.concat(axis: axis), name: name, inputs: xs)[0]
  }

  /// A fully connected layer, y = x·Wᵀ + b, with W stored [out, in] as PyTorch's Linear does.
  public mutating func linear(_ x: ValueID, weight: Tensor, bias: Tensor?, name: String) -> ValueID {
    weighted(.gemm(GemmAttributes(transB: true)), x, weight: weight, bias: bias, name: name)
  }

  /// A node of `op` on x, the initializer `<name>.weight` and, where there is one, `<name>.bias`.
  private mutating func weighted(_ op: Op, _ x: ValueID, weight: Tensor, bias: Tensor?, name: String) -> ValueID {
    var ins = [x, addInitializer(name: name + ".weight", weight)]
    if let bias { ins.append(addInitializer(name: name + ".bias", bias)) }
    return addNode(op, name: name, inputs: ins)[0]
  }

  public mutating func flatten(_ x: ValueID, axis: Int = 1, name: String) -> ValueID {
    addNode(.flatten(axis: axis), name: name, inputs: [x])[0]
  }

  public mutating func reshape(_ x: ValueID, to shape: [Int], name: String) -> ValueID {
    addNode(.reshape(shape: shape), name: name, inputs: [x])[0]
  }

  public mutating func slice(_ x: ValueID, _ a: SliceAttributes, name: String) -> ValueID {
    addNode(.slice(a), name: name, inputs: [x])[0]
  }

  public mutating func softmax(_ x: ValueID, axis: Int = -1, name: String) -> ValueID {
    addNode(.softmax(axis: axis), name: name, inputs: [x])[0]
  }

  public mutating func dropout(_ x: ValueID, ratio: Float, name: String) -> ValueID {
    addNode(.dropout(ratio: ratio), name: name, inputs: [x])[0]
  }
}
