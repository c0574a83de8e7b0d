import VeilTestSupport

// Structure-aware mutations: each changes one part of a valid file and writes it back valid
// around that part (lengths, CRCs), so the fuzzer spends its time past the outer checks.

enum Mutators {
  typealias Mutate = (inout [UInt8], Int, inout MutationRandom) -> Void

  // MARK: Protobuf (ONNX)

  static func protobuf(_ bytes: inout [UInt8], _ maxSize: Int, _ rng: inout MutationRandom) {
    guard var tree = ProtoTree.parse(bytes), !tree.isEmpty else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    let paths = ProtoTree.paths(tree)
    let path = paths[rng.below(paths.count)]
    let donor = paths[rng.below(paths.count)]
    let donorField = field(tree, at: donor)
    let op = rng.below(7)
    ProtoTree.modify(&tree, at: path) { list, k in
      switch op {
      case 0:
        // A number on an edge: dims, data types, attribute ints, lengths of lists.
        if list[k].wireType == 2 {
          if list[k].children == nil { rng.mutateBytes(&list[k].bytes, maxSize: 4096) }
        } else {
          let v = rng.interesting()
          list[k].scalar = rng.below(2) == 0 ? v : 0 &- v  // negatives as protobuf writes them
        }
      case 1:
        if list[k].children == nil, list[k].wireType == 2 {
          rng.mutateBytes(&list[k].bytes, maxSize: 4096)
        } else {
          list[k].scalar &+= UInt64(bitPattern: Int64(rng.below(5) - 2))
        }
      case 2:
        for _ in 0..<(1 + rng.below(rng.below(8) == 0 ? 64 : 3)) { list.insert(list[k], at: k) }
      case 3, 4:
        rng.edit(&list, at: k, op - 2)
      case 5:
        if rng.below(2) == 0 {
          list[k].number = UInt64(max(1, Int(list[k].number) + rng.below(5) - 2))
        } else {
          list[k].wireType = [0, 1, 2, 5][rng.below(4)]
        }
      default:
        // Splice: a field from elsewhere in the model (a node, a tensor, an attribute) here.
        if let donorField { list.insert(donorField, at: k) }
      }
    }
    bytes = ProtoTree.serialize(tree)
  }

  static func field(_ fields: [ProtoField], at path: [Int]) -> ProtoField? {
    guard let first = path.first, first < fields.count else { return nil }
    if path.count == 1 { return fields[first] }
    return fields[first].children.flatMap { field($0, at: Array(path.dropFirst())) }
  }

  // MARK: PNG

  static let pngColourTypes: [UInt8] = [0, 2, 3, 4, 6]
  static let pngDepths: [UInt8] = [1, 2, 4, 8, 16]

  static func png(_ bytes: inout [UInt8], _ maxSize: Int, _ rng: inout MutationRandom) {
    guard var chunks = PNGFile.chunks(bytes), !chunks.isEmpty else {
      // Not whole chunks (a byte-level mutation broke it): mutate, then repair what parses.
      rng.mutateBytes(&bytes, maxSize: maxSize)
      return
    }
    let k = rng.below(chunks.count)
    let op = rng.below(8)
    switch op {
    case 0:
      // IHDR: sides on the edges of the limits, any depth, colour type and interlace.
      if let h = chunks.firstIndex(where: { $0.type == Array("IHDR".utf8) }), chunks[h].data.count == 13 {
        let w = UInt32(truncatingIfNeeded: rng.interesting())
        let ht = UInt32(truncatingIfNeeded: rng.interesting())
        if rng.below(2) == 0 { chunks[h].data.replaceSubrange(0..<4, with: be32(w)) }
        if rng.below(2) == 0 { chunks[h].data.replaceSubrange(4..<8, with: be32(ht)) }
        if rng.below(3) == 0 { chunks[h].data[8] = pngDepths[rng.below(pngDepths.count)] }
        if rng.below(3) == 0 { chunks[h].data[9] = pngColourTypes[rng.below(pngColourTypes.count)] }
        if rng.below(4) == 0 { chunks[h].data[12] = UInt8(rng.below(2)) }
      }
    case 1:
      rng.mutateBytes(&chunks[k].data, maxSize: maxSize / 2)
    case 2, 3, 4:
      rng.edit(&chunks, at: k, op - 2)
    case 5:
      // A known ancillary chunk, well formed or not.
      let text = Array("Comment\0".utf8) + [UInt8](repeating: 0x41, count: rng.below(300))
      let options: [PNGFile.Chunk] = [
        PNGFile.Chunk(type: Array("tRNS".utf8), data: [UInt8](repeating: 0x80, count: rng.below(300))),
        PNGFile.Chunk(type: Array("PLTE".utf8), data: [UInt8](repeating: 0x40, count: 3 * rng.below(300))),
        PNGFile.Chunk(type: Array("gAMA".utf8), data: be32(UInt32(truncatingIfNeeded: rng.interesting()))),
        PNGFile.Chunk(type: Array("tEXt".utf8), data: text),
        PNGFile.Chunk(
          type: Array("zTXt".utf8), data: Array("Comment\0\0".utf8) + Checksum.zlibStored(text + text + text)),
        PNGFile.Chunk(
          type: Array("iCCP".utf8),
          data: Array("icc\0\0".utf8) + Checksum.zlibStored([UInt8](repeating: 0, count: rng.below(4096)))),
        PNGFile.Chunk(
          type: Array("sPLT".utf8), data: Array("p\0".utf8) + [8] + [UInt8](repeating: 1, count: 6 * rng.below(100))),
        PNGFile.Chunk(type: Array("vpAg".utf8), data: [UInt8](repeating: 7, count: rng.below(64))),
        PNGFile.Chunk(
          type: Array("eXIf".utf8), data: Array("MM\0*".utf8) + [UInt8](repeating: 0, count: rng.below(64))),
      ]
      chunks.insert(options[rng.below(options.count)], at: max(1, k))
    case 6:
      // New pixel data for the declared size (every filter type), so decoding goes all the way.
      if let h = chunks.first(where: { $0.type == Array("IHDR".utf8) }), h.data.count == 13 {
        let w = Int(min(readBE32(h.data, 0), 4096))
        let ht = Int(min(readBE32(h.data, 4), 4096))
        let channels = [0: 1, 2: 3, 3: 1, 4: 2, 6: 4][Int(h.data[9])] ?? 1
        let bits = Int(h.data[8]) * channels
        let rowBytes = (w * bits + 7) / 8
        let budget = max(0, maxSize - bytes.count)
        let rows = min(ht, budget / max(rowBytes + 1, 1))
        var raw: [UInt8] = []
        for _ in 0..<rows {
          raw.append(UInt8(rng.below(6)))
          raw += (0..<rowBytes).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        }
        chunks.removeAll { $0.type == Array("IDAT".utf8) }
        let end = chunks.firstIndex { $0.type == Array("IEND".utf8) } ?? chunks.count
        chunks.insert(PNGFile.Chunk(type: Array("IDAT".utf8), data: Checksum.zlibStored(raw)), at: end)
      }
    default:
      // Split an IDAT in two (decoders must join them).
      if let i = chunks.firstIndex(where: { $0.type == Array("IDAT".utf8) }), chunks[i].data.count > 1 {
        let cut = 1 + rng.below(chunks[i].data.count - 1)
        let tail = Array(chunks[i].data[cut...])
        chunks[i].data.removeSubrange(cut...)
        chunks.insert(PNGFile.Chunk(type: Array("IDAT".utf8), data: tail), at: i + 1)
      }
    }
    bytes = PNGFile.assemble(chunks)
  }

  // MARK: JPEG

  static let frameMarkers: [UInt8] = [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC9, 0xCA, 0xCB]

  static func jpeg(_ bytes: inout [UInt8], _ maxSize: Int, _ rng: inout MutationRandom) {
    guard var segments = JPEGFile.segments(bytes), !segments.isEmpty else {
      return rng.mutateBytes(&bytes, maxSize: maxSize)
    }
    let k = rng.below(segments.count)
    let sof = segments.firstIndex { frameMarkers.contains($0.marker) }
    let op = rng.below(8)
    switch op {
    case 0:
      // The frame's height and width on the edges of the limits.
      if let f = sof, segments[f].payload.count >= 5 {
        if rng.below(2) == 0 { segments[f].payload.replaceSubrange(1..<3, with: be16(Int(rng.interesting() & 0xFFFF))) }
        if rng.below(2) == 0 { segments[f].payload.replaceSubrange(3..<5, with: be16(Int(rng.interesting() & 0xFFFF))) }
      }
    case 1:
      // A large application segment before the frame header (where a scan of the first bytes
      // would stop looking), or several.
      let size = min(65533, max(0, maxSize - bytes.count - 4))
      let app = JPEGFile.Segment(
        marker: 0xE0 + UInt8(rng.below(16)),
        payload: [UInt8](repeating: UInt8(rng.below(256)), count: rng.below(size + 1)))
      segments.insert(app, at: min(k, sof ?? k))
    case 2:
      rng.mutateBytes(&segments[k].payload, maxSize: 1024)
    case 3, 4, 5:
      rng.edit(&segments, at: k, op - 3)
    case 6:
      if let f = sof { segments[f].marker = frameMarkers[rng.below(frameMarkers.count)] }
    default:
      if let s = segments.indices.filter({ segments[$0].marker == 0xDA }).randomElement(using: &rng) {
        rng.mutateBytes(&segments[s].scan, maxSize: maxSize / 2)
      }
    }
    bytes = JPEGFile.assemble(segments)
  }

  // MARK: Length-prefixed headers (safetensors, npy)

  /// Safetensors: 8-byte header length, JSON header, data. The header changes, its length
  /// follows.
  static func safetensors(_ bytes: inout [UInt8], _ maxSize: Int, _ rng: inout MutationRandom) {
    guard bytes.count >= 8 else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    let n = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) } & 0xFFFF_FFFF)
    guard n <= bytes.count - 8 else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    var header = Array(bytes[8..<(8 + n)])
    var data = Array(bytes[(8 + n)...])
    switch rng.below(3) {
    case 0: mutateNumbers(&header, &rng)
    case 1: rng.mutateBytes(&header, maxSize: maxSize)
    default: rng.mutateBytes(&data, maxSize: maxSize)
    }
    bytes = le64(UInt64(header.count)) + header + data
  }

  /// NumPy: magic, version, header length (2 or 4 bytes), header dict, data.
  static func npy(_ bytes: inout [UInt8], _ maxSize: Int, _ rng: inout MutationRandom) {
    guard bytes.count >= 10, bytes[6] <= 3 else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    let wide = bytes[6] >= 2
    let start = wide ? 12 : 10
    guard bytes.count >= start else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    let n =
      wide
      ? Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
      : Int(bytes[8]) | Int(bytes[9]) << 8
    guard n <= bytes.count - start else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    var header = Array(bytes[start..<(start + n)])
    var data = Array(bytes[(start + n)...])
    switch rng.below(3) {
    case 0: mutateNumbers(&header, &rng)
    case 1: rng.mutateBytes(&header, maxSize: 1024)
    default: rng.mutateBytes(&data, maxSize: maxSize)
    }
    let length = wide ? le32(UInt32(header.count)) : le16(UInt16(truncatingIfNeeded: header.count))
    bytes = Array(bytes[0..<8]) + length + header + data
  }

  /// Replaces one decimal number in text by a value on an edge (shapes, offsets).
  static func mutateNumbers(_ text: inout [UInt8], _ rng: inout MutationRandom) {
    let digits = text.indices.filter {
      (0x30...0x39).contains(text[$0]) && ($0 == 0 || !(0x30...0x39).contains(text[$0 - 1]))
    }
    guard let start = digits.randomElement(using: &rng) else { return }
    var end = start
    while end < text.count, (0x30...0x39).contains(text[end]) { end += 1 }
    let value = rng.below(4) == 0 ? "-1" : String(rng.interesting())
    text.replaceSubrange(start..<end, with: Array(value.utf8))
  }

  // MARK: DCAP quotes

  /// One of a quote's size, count or type fields set to a value on an edge; the rest of the
  /// quote (and its signatures) unchanged.
  static func quote(_ bytes: inout [UInt8], _ maxSize: Int, _ rng: inout MutationRandom) {
    guard bytes.count > 640 else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    let version = Int(bytes[0]) | Int(bytes[1]) << 8
    let tee = bytes[4]
    let bodySize = version == 5 ? 6 + (bytes[48] == 1 ? 384 : bytes[48] == 3 ? 648 : 584) : (tee == 0x81 ? 584 : 384)
    let signed = 48 + bodySize
    // (offset, width) of the fields that decide where later fields are.
    var fields: [(Int, Int)] = [(0, 2), (2, 2), (4, 4), (signed, 4)]
    if version == 5 { fields += [(48, 2), (50, 4)] }
    let sigStart = signed + 4
    var qe = sigStart + 128
    if version >= 4 {
      fields += [(qe, 2), (qe + 2, 4)]
      qe += 6
    }
    fields.append((qe + 448, 2))
    if qe + 450 <= bytes.count - 2 {
      let auth = Int(bytes[qe + 448]) | Int(bytes[qe + 449]) << 8
      fields += [(qe + 450 + auth, 2), (qe + 452 + auth, 4)]
    }
    let (at, width) = fields[rng.below(fields.count)]
    guard at + width <= bytes.count else { return rng.mutateBytes(&bytes, maxSize: maxSize) }
    let v = rng.interesting()
    for i in 0..<width { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
  }
}

extension Array {
  /// A random element drawn with the mutators' generator.
  func randomElement(using rng: inout MutationRandom) -> Element? {
    isEmpty ? nil : self[rng.below(count)]
  }
}
