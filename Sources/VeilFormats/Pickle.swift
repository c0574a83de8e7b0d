import Foundation

/// A value produced by `Unpickler`. Containers are indices into the document's arena, so values
/// never nest in Swift memory: no recursive destruction, and shared or cyclic references from the
/// memo are harmless.
public enum PickleValue: Equatable, Sendable {
  case none
  case bool(Bool)
  case int(Int)
  /// An integer too large for `Int`: its little-endian two's-complement bytes (LONG1).
  case bigInt([UInt8])
  case float(Double)
  case string(String)
  case bytes([UInt8])
  /// `PickleDocument.tuples[i]`.
  case tuple(Int)
  /// `PickleDocument.lists[i]`.
  case list(Int)
  /// `PickleDocument.dicts[i]`.
  case dict(Int)
  /// A whitelisted global (`module.name`), never imported or called.
  case global(module: String, name: String)
  /// `PickleDocument.calls[i]`: a REDUCE or NEWOBJ of a whitelisted global, recorded, not run.
  case call(Int)
  /// `PickleDocument.persistentIDs[i]`: a BINPERSID reference.
  case persistent(Int)
}

/// A recorded call of a whitelisted global (REDUCE/NEWOBJ), plus any BUILD state.
public struct PickleCall: Sendable {
  public var module: String
  public var name: String
  public var args: PickleValue
  public var state: PickleValue?
}

/// The result of one unpickling: the root value and the arena its containers live in.
public struct PickleDocument: Sendable {
  public var root: PickleValue = .none
  public var tuples: [[PickleValue]] = []
  public var lists: [[PickleValue]] = []
  /// Dict entries in insertion order (a SETITEM of an existing string or int key replaces it).
  public var dicts: [[(key: PickleValue, value: PickleValue)]] = []
  public var calls: [PickleCall] = []
  public var persistentIDs: [PickleValue] = []
  /// Where the STOP opcode ended (the next pickle in the file starts here).
  public var endOffset: Int = 0

  /// The elements of a tuple or list, nil for anything else.
  public func sequence(_ v: PickleValue) -> [PickleValue]? {
    switch v {
    case .tuple(let i): return tuples[i]
    case .list(let i): return lists[i]
    default: return nil
    }
  }

  /// The entries of a dict, nil for anything else.
  public func entries(_ v: PickleValue) -> [(key: PickleValue, value: PickleValue)]? {
    if case .dict(let i) = v { return dicts[i] }
    return nil
  }
}

/// A dict key that can be looked up by hash: the string and integer keys a state_dict uses.
private enum DictKey: Hashable {
  case string(String)
  case int(Int)
}

/// A minimal, non-executing unpickler for protocol ≤ 5 streams of the kind `torch.save` writes
/// for state_dicts. Globals are accepted only from a whitelist; REDUCE, NEWOBJ and BUILD are
/// recorded as data (`PickleCall`), except `collections.OrderedDict()` which becomes a dict.
/// The stack, the memo, the number of created objects and the number of elements all
/// containers hold together are bounded, and each dict keeps a hash index of its string and
/// integer keys, so unpickling takes time and memory linear in the stream.
public struct Unpickler {
  /// Globals allowed by default: what a PyTorch state_dict needs, nothing that runs code.
  public static let torchWhitelist: Set<String> = [
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage", "torch.HalfStorage", "torch.LongStorage", "torch.DoubleStorage",
    "torch.BFloat16Storage", "torch.IntStorage",
  ]

  public var whitelist: Set<String>
  public var format: String
  public var maxStack = 1 << 20
  public var maxMemo = 1 << 20
  public var maxObjects = 1 << 22
  /// Elements of all tuples, lists and dicts together: a one-byte DUP + APPEND can otherwise
  /// grow a list by 40 bytes of `PickleValue` per input byte. A large model's state_dict holds a
  /// few thousand tensors of about ten elements each.
  public var maxElements = 1 << 22

  public init(whitelist: Set<String> = Unpickler.torchWhitelist, format: String = "pickle") {
    self.whitelist = whitelist
    self.format = format
  }

  /// Unpickles one stream starting at `offset` of `bytes`, up to and including its STOP.
  public func load(_ bytes: [UInt8], from offset: Int = 0) throws -> PickleDocument {
    var doc = PickleDocument()
    var stack: [PickleValue] = []
    var marks: [Int] = []
    var memo: [Int: PickleValue] = [:]
    var pos = offset
    var objects = 0
    var elements = 0
    /// Per dict, the position of each string or integer key in its entry list.
    var dictIndex: [[DictKey: Int]] = []
    let format = self.format

    func truncated(_ at: Int, _ detail: String) -> FormatError {
      .truncated(format: format, offset: at, detail: detail)
    }
    func malformed(_ at: Int, _ detail: String) -> FormatError {
      .malformed(format: format, offset: at, detail: detail)
    }
    func take(_ n: Int, _ what: String) throws -> ArraySlice<UInt8> {
      guard n >= 0, n <= bytes.count - pos else {
        throw truncated(pos, "\(what) needs \(n) byte(s), \(bytes.count - pos) left")
      }
      defer { pos += n }
      return bytes[pos..<(pos + n)]
    }
    func uint(_ n: Int, _ what: String) throws -> UInt64 {
      let s = try take(n, what)
      var v: UInt64 = 0
      for (i, b) in s.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
      return v
    }
    func length(_ n: Int, _ what: String, at: Int) throws -> Int {
      let v = try uint(n, what)
      guard v <= UInt64(bytes.count - pos) else {
        throw truncated(pos, "\(what) of \(v) byte(s) at opcode offset \(at) exceeds the \(bytes.count - pos) left")
      }
      return Int(v)
    }
    func pop(_ at: Int, _ op: String) throws -> PickleValue {
      guard let v = stack.popLast() else { throw malformed(at, "\(op) on an empty stack") }
      if let m = marks.last, stack.count < m { throw malformed(at, "\(op) pops past a MARK") }
      return v
    }
    func popMark(_ at: Int, _ op: String) throws -> [PickleValue] {
      guard let m = marks.popLast() else { throw malformed(at, "\(op) without a MARK") }
      let items = Array(stack[m...])
      stack.removeSubrange(m...)
      return items
    }
    func push(_ v: PickleValue, _ at: Int) throws {
      guard stack.count < maxStack else { throw malformed(at, "stack exceeds \(maxStack) entries") }
      stack.append(v)
    }
    func newObject(_ at: Int) throws {
      objects += 1
      guard objects <= maxObjects else { throw malformed(at, "more than \(maxObjects) objects") }
    }
    func addElements(_ n: Int, _ at: Int) throws {
      elements += n
      guard elements <= maxElements else {
        throw malformed(at, "containers hold more than \(maxElements) elements in all; not a state_dict pickle")
      }
    }
    func newDict(_ at: Int) throws -> PickleValue {
      try newObject(at)
      doc.dicts.append([])
      dictIndex.append([:])
      return .dict(doc.dicts.count - 1)
    }
    func makeTuple(_ items: [PickleValue], _ at: Int) throws -> PickleValue {
      try newObject(at)
      try addElements(items.count, at)
      doc.tuples.append(items)
      return .tuple(doc.tuples.count - 1)
    }
    func setItem(_ dictValue: PickleValue, _ k: PickleValue, _ v: PickleValue, _ at: Int, _ op: String) throws {
      guard case .dict(let d) = dictValue else { throw malformed(at, "\(op) on a non-dict") }
      let key: DictKey?
      switch k {
      case .string(let s): key = .string(s)
      case .int(let i): key = .int(i)
      default: key = nil
      }
      if let key, let i = dictIndex[d][key] {
        doc.dicts[d][i].value = v
        return
      }
      try addElements(1, at)
      if let key { dictIndex[d][key] = doc.dicts[d].count }
      doc.dicts[d].append((k, v))
    }
    func global(_ module: String, _ name: String, _ at: Int, _ op: String) throws -> PickleValue {
      let full = "\(module).\(name)"
      guard whitelist.contains(full) else {
        throw malformed(at, "\(op) '\(full)' is not an allowed global (only \(whitelist.sorted().joined(separator: ", ")))")
      }
      return .global(module: module, name: name)
    }
    func memoPut(_ index: Int, _ at: Int) throws {
      guard let top = stack.last else { throw malformed(at, "memo store on an empty stack") }
      guard memo[index] != nil || memo.count < maxMemo else { throw malformed(at, "memo exceeds \(maxMemo) entries") }
      memo[index] = top
    }
    func memoGet(_ index: Int, _ at: Int) throws {
      guard let v = memo[index] else { throw malformed(at, "memo key \(index) was never stored") }
      try push(v, at)
    }
    func line(_ what: String) throws -> String {
      // Only the first 1025 bytes are searched: a longer line is refused either way.
      let window = bytes[pos..<min(bytes.count, pos + 1025)]
      guard let nl = window.firstIndex(of: 0x0A) else {
        if window.count < 1025 { throw truncated(pos, "\(what) has no newline") }
        throw malformed(pos, "\(what) is not a short UTF-8 line")
      }
      guard let s = String(bytes: bytes[pos..<nl], encoding: .utf8) else {
        throw malformed(pos, "\(what) is not a short UTF-8 line")
      }
      pos = nl + 1
      return s
    }
    func text(_ n: Int, _ at: Int) throws -> String {
      let s = try take(n, "string")
      guard let str = String(bytes: s, encoding: .utf8) else { throw malformed(at, "string is not UTF-8") }
      return str
    }
    func callable(_ v: PickleValue, _ at: Int, _ op: String) throws -> (String, String) {
      guard case .global(let m, let n) = v else { throw malformed(at, "\(op) of something that is not a global") }
      return (m, n)
    }

    while true {
      let at = pos
      guard pos < bytes.count else { throw truncated(pos, "stream ends before STOP") }
      let op = bytes[pos]
      pos += 1
      switch op {
      case 0x80:  // PROTO
        let v = try uint(1, "PROTO")
        guard v <= 5 else { throw malformed(at, "unsupported pickle protocol \(v)") }
      case 0x95:  // FRAME: a length hint only
        _ = try uint(8, "FRAME")
      case 0x7D:  // EMPTY_DICT
        try push(try newDict(at), at)
      case 0x5D:  // EMPTY_LIST
        try newObject(at)
        doc.lists.append([])
        try push(.list(doc.lists.count - 1), at)
      case 0x29:  // EMPTY_TUPLE
        try push(try makeTuple([], at), at)
      case 0x28:  // MARK
        guard marks.count < maxStack else { throw malformed(at, "too many MARKs") }
        marks.append(stack.count)
      case 0x4A:  // BININT
        try push(.int(Int(Int32(bitPattern: UInt32(try uint(4, "BININT"))))), at)
      case 0x4B:  // BININT1
        try push(.int(Int(try uint(1, "BININT1"))), at)
      case 0x4D:  // BININT2
        try push(.int(Int(try uint(2, "BININT2"))), at)
      case 0x8A:  // LONG1
        let n = try length(1, "LONG1", at: at)
        let b = Array(try take(n, "LONG1"))
        if n == 0 {
          try push(.int(0), at)
        } else if n <= 8, let top = b.last {
          var v: UInt64 = (top & 0x80) != 0 ? ~0 : 0
          for (i, x) in b.enumerated() {
            v &= ~(UInt64(0xFF) << (8 * UInt64(i)))
            v |= UInt64(x) << (8 * UInt64(i))
          }
          try push(.int(Int(Int64(bitPattern: v))), at)
        } else {
          try push(.bigInt(b), at)
        }
      case 0x47:  // BINFLOAT, big-endian
        let s = try take(8, "BINFLOAT")
        var v: UInt64 = 0
        for x in s { v = v << 8 | UInt64(x) }
        try push(.float(Double(bitPattern: v)), at)
      case 0x8C:  // SHORT_BINUNICODE
        try push(.string(try text(try length(1, "SHORT_BINUNICODE", at: at), at)), at)
      case 0x58:  // BINUNICODE
        try push(.string(try text(try length(4, "BINUNICODE", at: at), at)), at)
      case 0x8D:  // BINUNICODE8
        try push(.string(try text(try length(8, "BINUNICODE8", at: at), at)), at)
      case 0x55:  // SHORT_BINSTRING (py2 str): bytes, decoded as Latin-1
        let s = try take(try length(1, "SHORT_BINSTRING", at: at), "SHORT_BINSTRING")
        try push(.string(String(s.map { Character(Unicode.Scalar($0)) })), at)
      case 0x54:  // BINSTRING
        let n = Int(Int32(bitPattern: UInt32(try uint(4, "BINSTRING"))))
        guard n >= 0 else { throw malformed(at, "BINSTRING with negative length") }
        let s = try take(n, "BINSTRING")
        try push(.string(String(s.map { Character(Unicode.Scalar($0)) })), at)
      case 0x43:  // SHORT_BINBYTES
        try push(.bytes(Array(try take(try length(1, "SHORT_BINBYTES", at: at), "SHORT_BINBYTES"))), at)
      case 0x42:  // BINBYTES
        try push(.bytes(Array(try take(try length(4, "BINBYTES", at: at), "BINBYTES"))), at)
      case 0x8E:  // BINBYTES8
        try push(.bytes(Array(try take(try length(8, "BINBYTES8", at: at), "BINBYTES8"))), at)
      case 0x4E:  // NONE
        try push(.none, at)
      case 0x88:  // NEWTRUE
        try push(.bool(true), at)
      case 0x89:  // NEWFALSE
        try push(.bool(false), at)
      case 0x85, 0x86, 0x87:  // TUPLE1/2/3
        let n = Int(op - 0x84)
        var items = [PickleValue]()
        for _ in 0..<n { items.append(try pop(at, "TUPLE\(n)")) }
        try push(try makeTuple(items.reversed(), at), at)
      case 0x74:  // TUPLE
        try push(try makeTuple(try popMark(at, "TUPLE"), at), at)
      case 0x6C:  // LIST
        let items = try popMark(at, "LIST")
        try newObject(at)
        try addElements(items.count, at)
        doc.lists.append(items)
        try push(.list(doc.lists.count - 1), at)
      case 0x61, 0x65:  // APPEND, APPENDS
        let items = op == 0x61 ? [try pop(at, "APPEND")] : try popMark(at, "APPENDS")
        guard case .list(let l) = stack.last else { throw malformed(at, "APPEND(S) to a non-list") }
        try addElements(items.count, at)
        doc.lists[l] += items
      case 0x64:  // DICT
        let items = try popMark(at, "DICT")
        guard items.count % 2 == 0 else { throw malformed(at, "DICT with an odd number of items") }
        let d = try newDict(at)
        for i in stride(from: 0, to: items.count, by: 2) { try setItem(d, items[i], items[i + 1], at, "DICT") }
        try push(d, at)
      case 0x73:  // SETITEM
        let v = try pop(at, "SETITEM")
        let k = try pop(at, "SETITEM")
        guard let d = stack.last else { throw malformed(at, "SETITEM without a dict") }
        try setItem(d, k, v, at, "SETITEM")
      case 0x75:  // SETITEMS
        let items = try popMark(at, "SETITEMS")
        guard items.count % 2 == 0 else { throw malformed(at, "SETITEMS with an odd number of items") }
        guard let d = stack.last else { throw malformed(at, "SETITEMS without a dict") }
        for i in stride(from: 0, to: items.count, by: 2) { try setItem(d, items[i], items[i + 1], at, "SETITEMS") }
      case 0x71:  // BINPUT
        try memoPut(Int(try uint(1, "BINPUT")), at)
      case 0x72:  // LONG_BINPUT
        try memoPut(Int(try uint(4, "LONG_BINPUT")), at)
      case 0x94:  // MEMOIZE
        try memoPut(memo.count, at)
      case 0x68:  // BINGET
        try memoGet(Int(try uint(1, "BINGET")), at)
      case 0x6A:  // LONG_BINGET
        try memoGet(Int(try uint(4, "LONG_BINGET")), at)
      case 0x63:  // GLOBAL
        let module = try line("GLOBAL module")
        let name = try line("GLOBAL name")
        try push(try global(module, name, at, "GLOBAL"), at)
      case 0x93:  // STACK_GLOBAL
        let name = try pop(at, "STACK_GLOBAL")
        let module = try pop(at, "STACK_GLOBAL")
        guard case .string(let m) = module, case .string(let n) = name else {
          throw malformed(at, "STACK_GLOBAL needs two strings")
        }
        try push(try global(m, n, at, "STACK_GLOBAL"), at)
      case 0x52, 0x81:  // REDUCE, NEWOBJ
        let name = op == 0x52 ? "REDUCE" : "NEWOBJ"
        let args = try pop(at, name)
        let (m, n) = try callable(try pop(at, name), at, name)
        guard case .tuple = args else { throw malformed(at, "\(name) arguments are not a tuple") }
        if m == "collections" && n == "OrderedDict" {
          // OrderedDict() or OrderedDict([]): an empty dict; items come by SETITEM(S).
          try push(try newDict(at), at)
        } else {
          try newObject(at)
          doc.calls.append(PickleCall(module: m, name: n, args: args, state: nil))
          try push(.call(doc.calls.count - 1), at)
        }
      case 0x62:  // BUILD: recorded on calls, ignored on dicts (e.g. a state_dict's _metadata)
        let state = try pop(at, "BUILD")
        guard let target = stack.last else { throw malformed(at, "BUILD on an empty stack") }
        switch target {
        case .call(let c): doc.calls[c].state = state
        case .dict: break
        default: throw malformed(at, "BUILD on an object that is neither a dict nor a recorded call")
        }
      case 0x51:  // BINPERSID
        let pid = try pop(at, "BINPERSID")
        doc.persistentIDs.append(pid)
        try push(.persistent(doc.persistentIDs.count - 1), at)
      case 0x30:  // POP
        _ = try pop(at, "POP")
      case 0x32:  // DUP
        guard let top = stack.last else { throw malformed(at, "DUP on an empty stack") }
        try push(top, at)
      case 0x2E:  // STOP
        guard stack.count == 1, marks.isEmpty else {
          throw malformed(at, "STOP with \(stack.count) value(s) on the stack and \(marks.count) open MARK(s)")
        }
        doc.root = stack[0]
        doc.endOffset = pos
        return doc
      default:
        throw malformed(at, String(format: "unsupported pickle opcode 0x%02x", op))
      }
    }
  }
}
