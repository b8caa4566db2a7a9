// Fuzzes smtp::CommandFramer (smtp/smtp_parse.hpp): the client's command stream cut into
// lines, with a buffer kept the way Session::serve keeps it.
//
// Input: byte 0 picks --max-line-length (0..254 as is, 255 for the default 4096: short limits
// reach the too-long paths with short inputs); the rest is the client's bytes.
//
// Checks, for the stream fed whole, byte by byte and in pseudo-random pieces:
// - need_more consumes nothing or everything (while skipping a long line), and then the bytes
//   kept buffered are at most max_line_length + 1 (the session's buffer stays bounded);
// - line and line_too_long always consume (progress), up to and including one LF;
// - a line is the buffer's start, never longer than the limit, without LF, CR stripped once;
// - the events equal those of a reference reading of the whole stream (every LF-terminated
//   piece, one CR before the LF dropped, is a line if it fits, else one line_too_long), so no
//   split of the input changes what the session sees.
#include "fuzz_util.hpp"
#include "smtp/smtp_parse.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Framer = stp::smtp::CommandFramer;

struct Event {
  Framer::Status status;
  std::string line;
  bool operator==(const Event&) const = default;
};

std::vector<Event> run(std::string_view input, const std::vector<std::size_t>& pieces,
                       std::size_t max) {
  Framer framer(max);
  std::vector<Event> events;
  std::string buffer;
  std::size_t next = 0;
  for (const std::size_t piece : pieces) {
    buffer.append(input.substr(next, piece));
    next += piece;
    for (;;) {
      const auto r = framer.next(buffer);
      FUZZ_CHECK(r.consumed <= buffer.size());
      const std::string_view seen(buffer.data(), r.consumed);
      if (r.status == Framer::Status::need_more) {
        FUZZ_CHECK(r.consumed == 0 || r.consumed == buffer.size());
        FUZZ_CHECK(seen.find('\n') == std::string_view::npos);
        buffer.erase(0, r.consumed);
        FUZZ_CHECK(buffer.find('\n') == std::string::npos, buffer);
        FUZZ_CHECK(buffer.size() <= max + 1, buffer);
        break;
      }
      FUZZ_CHECK(r.consumed > 0);
      FUZZ_CHECK(seen.back() == '\n' && seen.find('\n') == r.consumed - 1, buffer);
      if (r.status == Framer::Status::line) {
        FUZZ_CHECK(r.line.data() == buffer.data());
        FUZZ_CHECK(r.line.size() <= max);
        FUZZ_CHECK(r.line.find('\n') == std::string_view::npos);
        const bool had_cr = r.consumed >= 2 && seen[r.consumed - 2] == '\r';
        FUZZ_CHECK(r.line.size() == r.consumed - 1 - (had_cr ? 1 : 0));
        events.push_back({r.status, std::string(r.line)});
      } else {
        FUZZ_CHECK(r.status == Framer::Status::line_too_long);
        FUZZ_CHECK(r.line.empty());
        events.push_back({r.status, {}});
      }
      buffer.erase(0, r.consumed);
    }
  }
  return events;
}

std::vector<Event> reference(std::string_view input, std::size_t max) {
  std::vector<Event> events;
  const auto pieces = stp::fuzz::split(input, '\n');
  for (std::size_t i = 0; i + 1 < pieces.size(); ++i) {  // the last has no LF after it
    std::string_view line = pieces[i];
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() <= max) {
      events.push_back({Framer::Status::line, std::string(line)});
    } else {
      events.push_back({Framer::Status::line_too_long, {}});
    }
  }
  return events;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t max = data[0] == 255 ? 4096 : data[0];
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto expected = reference(input, max);
  for (const auto& pieces : stp::fuzz::splits(input)) {
    FUZZ_CHECK(run(input, pieces, max) == expected, input);
  }
  return 0;
}
