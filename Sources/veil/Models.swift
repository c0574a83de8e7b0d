import ArgumentParser
import Foundation
import VeilGraph
import VeilModels
import VeilTensor
import VeilTrain

struct Models: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "List the model builders and what each expects as input.")

  @Flag(help: "Print one JSON document.")
  var json = false

  struct Entry: Encodable {
    var name: String
    var parameters: Int
    var input: [Int]
    var preprocessing: String
    var summary: String
  }

  func run() throws {
    let entries = try ModelZoo.names.map { name -> Entry in
      let info = try ModelZoo.info(name)
      return Entry(
        name: name, parameters: info.parameterCount, input: info.inputShape, preprocessing: info.preprocessing,
        summary: info.summary)
    }
    if json { return try printJSON(entries) }
    for e in entries {
      print("\(e.name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(String(e.parameters).padding(toLength: 11, withPad: " ", startingAt: 0)) input \(e.input)  \(e.summary)")
      print(String(repeating: " ", count: 33) + "preprocessing: \(e.preprocessing)")
    }
  }
}
