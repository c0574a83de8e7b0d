/// Just enough of PNG and JPEG (and of the checksums and stored deflate they and gzip use) to
/// build small valid files byte by byte, cut a file into its chunks or segments, change one,
/// and put it back together valid: the image tests and the fuzzing harness (Fuzz/) share it.
import Foundation

// MARK: - Checksums and stored deflate

public enum Checksum {
  public static let crcTable: [UInt32] = (0..<256).map { n in
    var c = UInt32(n)
    for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    return c
  }

  /// CRC-32 (PNG chunks, gzip).
  public static func crc32(_ bytes: some Sequence<UInt8>) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
    return c ^ 0xFFFF_FFFF
  }

  public static func adler32(_ bytes: [UInt8]) -> UInt32 {
    var a: UInt32 = 1
    var b: UInt32 = 0
    for x in bytes {
      a = (a + UInt32(x)) % 65521
      b = (b + a) % 65521
    }
    return b << 16 | a
  }

  /// Deflate "stored" blocks: valid compressed data without a compressor.
  public static func deflateStored(_ data: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    repeat {
      let n = min(65535, data.count - i)
      let last: UInt8 = i + n == data.count ? 1 : 0
      out += [last, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8((~n >> 8) & 0xFF)]
      out += data[i..<(i + n)]
      i += n
    } while i < data.count
    return out
  }

  public static func zlibStored(_ data: [UInt8]) -> [UInt8] {
    [0x78, 0x01] + deflateStored(data) + be32(adler32(data))
  }

  public static func gzipStored(_ data: [UInt8]) -> [UInt8] {
    [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF] + deflateStored(data) + le32(crc32(data))
      + le32(UInt32(truncatingIfNeeded: data.count))
  }
}

public func be16(_ v: Int) -> [UInt8] { [UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
public func be32(_ v: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8((v >> (8 * UInt32($0))) & 0xFF) } }
public func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
public func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * UInt32($0))) & 0xFF) } }
public func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8((v >> (8 * UInt64($0))) & 0xFF) } }
public func readBE32(_ b: [UInt8], _ at: Int) -> UInt32 { b[at..<(at + 4)].reduce(0) { $0 << 8 | UInt32($1) } }

// MARK: - PNG chunks

public enum PNGFile {
  public static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

  public struct Chunk {
    public var type: [UInt8]
    public var data: [UInt8]

    public init(type: [UInt8], data: [UInt8]) {
      self.type = type
      self.data = data
    }
  }

  /// The chunks after the signature; nil when the bytes are not a sequence of whole chunks.
  public static func chunks(_ b: [UInt8]) -> [Chunk]? {
    guard b.starts(with: signature) else { return nil }
    var out: [Chunk] = []
    var i = 8
    while i + 12 <= b.count {
      let n = Int(readBE32(b, i))
      guard n <= b.count - i - 12 else { return nil }
      out.append(Chunk(type: Array(b[(i + 4)..<(i + 8)]), data: Array(b[(i + 8)..<(i + 8 + n)])))
      i += 12 + n
    }
    return i == b.count ? out : nil
  }

  /// A PNG of these chunks, every CRC correct.
  public static func assemble(_ chunks: [Chunk]) -> [UInt8] {
    var out = signature
    for c in chunks {
      out += be32(UInt32(c.data.count)) + c.type + c.data + be32(Checksum.crc32(c.type + c.data))
    }
    return out
  }

  public static func ihdr(width: UInt32, height: UInt32, depth: UInt8, color: UInt8, interlace: UInt8 = 0) -> Chunk {
    Chunk(type: Array("IHDR".utf8), data: be32(width) + be32(height) + [depth, color, 0, 0, interlace])
  }

  /// A whole PNG of unfiltered rows (filter byte 0 added here) in stored deflate blocks.
  public static func make(
    width: UInt32, height: UInt32, depth: UInt8, color: UInt8, rows: [[UInt8]], interlace: UInt8 = 0,
    extra: [Chunk] = []
  ) -> [UInt8] {
    let raw: [UInt8] = rows.flatMap { [UInt8(0)] + $0 }
    return assemble(
      [ihdr(width: width, height: height, depth: depth, color: color, interlace: interlace)] + extra + [
        Chunk(type: Array("IDAT".utf8), data: Checksum.zlibStored(raw)), Chunk(type: Array("IEND".utf8), data: []),
      ])
  }
}

// MARK: - JPEG segments

public enum JPEGFile {
  /// A marker segment: `marker` (the byte after FF) and its payload without the length field.
  /// Entropy-coded data after SOS is kept as the `scan` of that segment.
  public struct Segment {
    public var marker: UInt8
    public var payload: [UInt8]
    public var scan: [UInt8]

    public init(marker: UInt8, payload: [UInt8], scan: [UInt8] = []) {
      self.marker = marker
      self.payload = payload
      self.scan = scan
    }
  }

  /// The segments between SOI and EOI; nil when the bytes do not split that way.
  public static func segments(_ b: [UInt8]) -> [Segment]? {
    guard b.count >= 4, b[0] == 0xFF, b[1] == 0xD8 else { return nil }
    var out: [Segment] = []
    var i = 2
    while i + 1 < b.count {
      guard b[i] == 0xFF else { return nil }
      let marker = b[i + 1]
      if marker == 0xD9 { return out }
      guard i + 4 <= b.count else { return nil }
      let n = Int(b[i + 2]) << 8 | Int(b[i + 3])
      guard n >= 2, i + 2 + n <= b.count else { return nil }
      var seg = Segment(marker: marker, payload: Array(b[(i + 4)..<(i + 2 + n)]))
      i += 2 + n
      if marker == 0xDA {
        // The scan runs to the next marker that is neither stuffing (FF 00) nor a restart.
        var j = i
        while j + 1 < b.count, !(b[j] == 0xFF && b[j + 1] != 0 && !(0xD0...0xD7).contains(b[j + 1])) { j += 1 }
        seg.scan = Array(b[i..<min(j, b.count)])
        i = j
      }
      out.append(seg)
    }
    return nil
  }

  public static func assemble(_ segments: [Segment]) -> [UInt8] {
    var out: [UInt8] = [0xFF, 0xD8]
    for s in segments {
      out += [0xFF, s.marker] + be16(min(s.payload.count + 2, 0xFFFF)) + s.payload.prefix(0xFFFD) + s.scan
    }
    return out + [0xFF, 0xD9]
  }

  /// A minimal JPEG: every block is DC difference 0 then end-of-block, each coded by a Huffman
  /// table of one one-bit code, so a scan is a few bytes. `components` are (id, sampling);
  /// `before` goes between SOI and the tables (application segments). Progressive files have a
  /// DC scan then an AC scan of their one component.
  public static func minimal(
    width: Int, height: Int, components: [(UInt8, UInt8)] = [(1, 0x11)], progressive: Bool = false,
    before: [Segment] = []
  ) -> [UInt8] {
    let quant = Segment(marker: 0xDB, payload: [0] + [UInt8](repeating: 1, count: 64))
    let dc = Segment(marker: 0xC4, payload: [0x00, 1] + [UInt8](repeating: 0, count: 15) + [0x00])
    let ac = Segment(marker: 0xC4, payload: [0x10, 1] + [UInt8](repeating: 0, count: 15) + [0x00])
    let frame = Segment(
      marker: progressive ? 0xC2 : 0xC0,
      payload: [8] + be16(height) + be16(width) + [UInt8(components.count)] + components.flatMap { [$0.0, $0.1, 0] })
    // Two bits per block (DC category 0, EOB), padded with ones; one bit per block in each
    // progressive scan.
    let hMax = Int(components.map { $0.1 >> 4 }.max() ?? 1)
    let vMax = Int(components.map { $0.1 & 0xF }.max() ?? 1)
    let mcus = ((width + 8 * hMax - 1) / (8 * hMax)) * ((height + 8 * vMax - 1) / (8 * vMax))
    let blocksPerMCU = components.reduce(0) { $0 + Int($1.1 >> 4) * Int($1.1 & 0xF) }
    func data(bits: Int) -> [UInt8] {
      var out = [UInt8](repeating: 0, count: bits / 8)
      if bits % 8 != 0 { out.append(UInt8(0xFF >> (bits % 8))) }
      return out
    }
    func scan(_ ids: [UInt8], start: UInt8, end: UInt8, bits: Int) -> Segment {
      Segment(
        marker: 0xDA, payload: [UInt8(ids.count)] + ids.flatMap { [$0, 0x00] } + [start, end, 0], scan: data(bits: bits)
      )
    }
    var segments = before + [quant, frame, dc, ac]
    if progressive {
      let blocks = ((width + 7) / 8) * ((height + 7) / 8)
      segments += [
        scan([components[0].0], start: 0, end: 0, bits: blocks),
        scan([components[0].0], start: 1, end: 63, bits: blocks),
      ]
    } else {
      segments.append(scan(components.map(\.0), start: 0, end: 63, bits: 2 * mcus * blocksPerMCU))
    }
    return assemble(segments)
  }
}
