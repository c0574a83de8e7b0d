import Foundation

/// A streaming CSV record reader (RFC 4180): comma-separated, fields optionally quoted with
/// `""` for a quote inside, quoted fields may hold commas and line breaks, CRLF or LF endings;
/// a quote inside an unquoted field is an ordinary character.
/// Reads the file in 1 MiB chunks and refuses a record longer than `maxRecordBytes`, so a file of
/// any size, including one line of gigabytes or a quote never closed, streams in bounded memory.
final class CSVRecordReader {
  /// The longest record read, in bytes including separators and line breaks inside quotes
  /// (a TON_IoT row is a few hundred bytes; its longest fields, HTTP URIs and user agents, a
  /// few kilobytes).
  static let defaultMaxRecordBytes = 1 << 20

  let url: URL
  let maxRecordBytes: Int
  private let handle: FileHandle
  private var buffer: [UInt8] = []
  private var position = 0
  private var atEnd = false
  /// The 1-based line the next record starts on.
  private(set) var line = 1

  init(url: URL, maxRecordBytes: Int = CSVRecordReader.defaultMaxRecordBytes) throws {
    self.url = url
    self.maxRecordBytes = maxRecordBytes
    do { handle = try FileHandle(forReadingFrom: url) } catch {
      throw DataError.io(file: url.path, detail: "cannot open: \(error.localizedDescription)")
    }
  }

  deinit { try? handle.close() }

  private func byte() throws -> UInt8? {
    if position == buffer.count {
      if atEnd { return nil }
      let chunk: Data?
      do { chunk = try handle.read(upToCount: 1 << 20) } catch {
        throw DataError.io(file: url.path, detail: "read failed at line \(line): \(error.localizedDescription)")
      }
      guard let chunk, !chunk.isEmpty else {
        atEnd = true
        return nil
      }
      buffer = [UInt8](chunk)
      position = 0
    }
    defer { position += 1 }
    return buffer[position]
  }

  /// The next record's fields and the line it starts on; nil at the end of the file. Blank
  /// lines are skipped.
  func next() throws -> (line: Int, fields: [String])? {
    while true {
      var start = line
      var fields: [String] = []
      var field: [UInt8] = []
      var quoted = false
      var sawAnything = false
      var recordBytes = 0
      while true {
        guard let b = try byte() else {
          if quoted {
            throw DataError.csv(
              file: url.path, line: start, detail: "a quoted field is not closed before the end of the file")
          }
          if !sawAnything { return nil }
          fields.append(String(decoding: field, as: UTF8.self))
          return (start, fields)
        }
        sawAnything = true
        recordBytes += 1
        guard recordBytes <= maxRecordBytes else {
          throw DataError.csv(
            file: url.path, line: start,
            detail: "the record starting on this line is longer than \(maxRecordBytes) bytes, the most Veil reads in one "
              + (quoted
                ? "record: a quoted field is probably missing its closing quote"
                : "record: this does not look like a TON_IoT network CSV (are the line breaks there?)"))
        }
        if quoted {
          if b == UInt8(ascii: "\"") {
            if position < buffer.count, buffer[position] == UInt8(ascii: "\"") {
              position += 1
              field.append(b)
            } else if position == buffer.count, !atEnd, let next = try byte() {
              // The quote was the chunk's last byte: look at the first byte of the next chunk.
              if next == UInt8(ascii: "\"") {
                field.append(b)
              } else {
                quoted = false
                position -= 1
              }
            } else {
              quoted = false
            }
          } else {
            if b == UInt8(ascii: "\n") { line += 1 }
            field.append(b)
          }
          continue
        }
        switch b {
        case UInt8(ascii: "\"") where field.isEmpty:
          // Only a quote that opens a field starts quoting; one inside an unquoted field (a
          // URI such as /a"b) is kept as it is, as Python's csv module does.
          quoted = true
        case UInt8(ascii: ","):
          fields.append(String(decoding: field, as: UTF8.self))
          field.removeAll(keepingCapacity: true)
        case UInt8(ascii: "\n"):
          line += 1
          if field.last == UInt8(ascii: "\r") { field.removeLast() }
          if fields.isEmpty && field.isEmpty {
            sawAnything = false
            recordBytes = 0
            start = line
            continue
          }
          fields.append(String(decoding: field, as: UTF8.self))
          return (start, fields)
        default:
          field.append(b)
        }
      }
    }
  }
}
