// Fuzzes BDAT chunk accounting: the client's stream read the way Session::serve and
// Session::relay_bdat_chunk read it (inbound/client_io.cpp): command lines from CommandFramer, and
// after each "BDAT <size> [LAST]" (parse_bdat_arguments) exactly <size> bytes of chunk taken
// from the buffer and then from what arrives, never looked at as commands; a BDAT without a
// valid size ends the session (its chunk cannot be told from the commands after it).
//
// Input: byte 0 picks --max-line-length (as in fuzz_command_framer: 0..254, 255 for 4096);
// the rest is the client's bytes.
//
// Checks, for the stream fed whole, byte by byte and in pseudo-random pieces:
// - the events (command lines, line-too-long, chunks with their bytes, the end on a bad BDAT)
//   equal those of a reference reading of the whole stream, so no split of the input moves a
//   chunk boundary or lets chunk bytes be read as commands;
// - every input byte is accounted for exactly once: command bytes + chunk bytes + what is still
//   buffered (or the unread rest after a bad BDAT) = input size; a chunk never takes more than
//   its size, and the buffer kept between reads stays within max_line_length + 1 bytes;
#include "fuzz_util.hpp"
#include "smtp/smtp_parse.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Framer = stp::smtp::CommandFramer;
using stp::smtp::Verb;

struct Event {
  enum class Kind { line, too_long, chunk, bad_bdat } kind;
  std::string bytes;  // the line, or the chunk's bytes
  bool last = false;  // BDAT LAST
  bool operator==(const Event&) const = default;
};

struct Outcome {
  std::vector<Event> events;
  std::uint64_t chunk_left = 0;  // bytes of the last chunk not yet arrived
  bool operator==(const Outcome&) const = default;
};

// After a line: a BDAT line starts a chunk; a bad one ends everything.
bool on_line(std::string_view line, Outcome& out, std::uint64_t& remaining) {
  out.events.push_back({Event::Kind::line, std::string(line)});
  const auto command = stp::smtp::parse_command(line);
  if (command.syntax != stp::smtp::CommandSyntax::ok || command.command.verb != Verb::bdat) {
    return true;
  }
  const auto arguments = stp::smtp::parse_bdat_arguments(command.command.arguments);
  if (!arguments) {
    out.events.push_back({Event::Kind::bad_bdat, {}});
    return false;
  }
  out.events.push_back({Event::Kind::chunk, {}, arguments->last});
  remaining = arguments->size;
  return true;
}

Outcome reference(std::string_view input, std::size_t max) {
  Outcome out;
  std::size_t pos = 0;
  std::uint64_t remaining = 0;
  while (pos < input.size()) {
    if (remaining > 0) {
      const auto n =
          static_cast<std::size_t>(std::min<std::uint64_t>(remaining, input.size() - pos));
      out.events.back().bytes.append(input.substr(pos, n));
      pos += n;
      remaining -= n;
      continue;
    }
    const std::size_t lf = input.find('\n', pos);
    if (lf == std::string_view::npos) break;
    std::string_view line = input.substr(pos, lf - pos);
    pos = lf + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() > max) {
      out.events.push_back({Event::Kind::too_long, {}});
      continue;
    }
    if (!on_line(line, out, remaining)) break;
  }
  out.chunk_left = remaining;
  return out;
}

Outcome run(std::string_view input, const std::vector<std::size_t>& pieces, std::size_t max) {
  Outcome out;
  Framer framer(max);
  std::string buffer;
  std::size_t next = 0;
  std::uint64_t remaining = 0;
  std::size_t accounted = 0;  // bytes consumed as commands or chunk
  bool ended = false;
  for (const std::size_t piece : pieces) {
    if (ended) break;
    buffer.append(input.substr(next, piece));
    next += piece;
    for (;;) {
      if (remaining > 0) {  // relay_bdat_chunk: take what is buffered, up to the size
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, buffer.size()));
        if (n == 0) break;
        out.events.back().bytes.append(buffer, 0, n);
        buffer.erase(0, n);
        remaining -= n;
        accounted += n;
        continue;
      }
      const auto r = framer.next(buffer);
      FUZZ_CHECK(r.consumed <= buffer.size());
      if (r.status == Framer::Status::need_more) {
        buffer.erase(0, r.consumed);
        accounted += r.consumed;
        FUZZ_CHECK(buffer.size() <= max + 1, buffer);
        break;
      }
      const std::string line(r.line);
      buffer.erase(0, r.consumed);
      accounted += r.consumed;
      if (r.status == Framer::Status::line_too_long) {
        out.events.push_back({Event::Kind::too_long, {}});
        continue;
      }
      if (!on_line(line, out, remaining)) {
        ended = true;
        break;
      }
    }
  }
  if (ended) {
    FUZZ_CHECK(accounted + buffer.size() + (input.size() - next) == input.size());
  } else {
    FUZZ_CHECK(next == input.size() && accounted + buffer.size() == input.size());
    if (remaining > 0) FUZZ_CHECK(buffer.empty());
  }
  out.chunk_left = remaining;
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t max = data[0] == 255 ? 4096 : data[0];
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const Outcome expected = reference(input, max);
  std::uint64_t chunk_bytes = 0;
  for (const auto& e : expected.events) {
    if (e.kind == Event::Kind::chunk) chunk_bytes += e.bytes.size();
  }
  FUZZ_CHECK(chunk_bytes <= input.size());
  for (const auto& pieces : stp::fuzz::splits(input)) {
    FUZZ_CHECK(run(input, pieces, max) == expected, input);
  }
  return 0;
}
