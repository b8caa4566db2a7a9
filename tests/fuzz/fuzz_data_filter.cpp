// Fuzzes DataFilter (smtp/data_filter.hpp): what the client sends after 354, fed through the
// filter the way relay::data (proxy/relay.hpp) does, with both --bare-lf policies.
//
// Input: the client's bytes, as they are. If the input ends before an end of data, the target
// appends "\r\n.\r\n" so that every input yields a whole message to reason about; bytes after
// an end of data start another message (after reset()), as many as the input holds.
//
// Checks, for the input fed whole, byte by byte and in pseudo-random pieces (empty ones too):
// - feed() consumes at most what it was given, all of it unless it reports an end of data or
//   (policy reject) a bare line ending, and grows `out` by at most DataFilter::max_output(n);
//   an empty piece does nothing; a whole message's output is at most twice its input;
// - after every call, the output so far has no bare CR or LF, and "\r\n.\r\n" (counting the
//   CRLF that ended the DATA command) occurs in it only as its final 5 bytes, and only once
//   end_of_data was reported;
// - every way of splitting gives the same messages and the same end offsets, and reject (then
//   normalize, as the session does) gives the same output as normalize, stopping first exactly
//   at the first bare line ending;
// - the MTA, undoing dot-stuffing, sees exactly what the client meant (reference model below:
//   CRLF, bare LF and bare CR all end a line; a "." at the start of a line that began after a
//   CRLF is the client's stuffing, except a lone "." ended by a bare CR or LF, which is text).
#include "fuzz_util.hpp"
#include "smtp/data_filter.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using stp::BareLfPolicy;
using stp::DataFilter;

constexpr std::string_view kEnd = "\r\n.\r\n";

struct Message {
  std::string out;
  std::size_t end = 0;                    // input offset just after the end of data
  std::optional<std::size_t> first_bare;  // input offset where reject stopped first
  bool bare_reported = false;
};

// Output grown from `old_size`: no bare CR or LF anywhere, and the end marker only at the end.
// Looks only at the new bytes (and the few before them), so feeding byte by byte stays linear.
void check_output(const std::string& out, std::size_t old_size, bool ended) {
  const std::size_t from = old_size == 0 ? 0 : old_size - 1;
  for (std::size_t i = from; i < out.size(); ++i) {
    if (out[i] == '\r') FUZZ_CHECK(i + 1 < out.size() && out[i + 1] == '\n', out);
    if (out[i] == '\n') FUZZ_CHECK(i > 0 && out[i - 1] == '\r', out);
  }
  // The DATA command's CRLF counts as the line break before the first byte.
  const std::string window =
      old_size < kEnd.size() ? "\r\n" + out : out.substr(old_size - (kEnd.size() - 1));
  const std::size_t marker = window.find(kEnd);
  if (ended) {
    FUZZ_CHECK(marker == window.size() - kEnd.size(), out);
  } else {
    FUZZ_CHECK(marker == std::string::npos, out);
  }
}

// Feeds `input` in `pieces` like the session: a buffer of what arrived and was not consumed.
// With `closed`, the input must end exactly at an end of data.
std::vector<Message> run(std::string_view input, const std::vector<std::size_t>& pieces,
                         BareLfPolicy policy, bool closed) {
  std::vector<Message> messages(1);
  DataFilter filter(policy);
  bool switched = false;  // reject seen once: the session goes on with normalize
  std::string buffer;
  std::size_t buffer_start = 0;  // input offset of buffer[0]
  std::size_t next = 0;
  for (const std::size_t piece : pieces) {
    buffer.append(input.substr(next, piece));
    next += piece;
    if (piece == 0) {
      std::string out;
      const auto r = filter.feed({}, out);
      FUZZ_CHECK(r.consumed == 0 && !r.end_of_data && !r.bare_line_ending && out.empty());
    }
    while (!buffer.empty()) {
      Message& m = messages.back();
      const std::size_t old_size = m.out.size();
      const auto r = filter.feed(buffer, m.out);
      FUZZ_CHECK(r.consumed <= buffer.size());
      const std::size_t grown = m.out.size() - old_size;
      // Up to two held bytes (".\r") may flush as "..\r\n" before the new ones.
      FUZZ_CHECK(grown <= DataFilter::max_output(buffer.size()), buffer);
      check_output(m.out, old_size, r.end_of_data);
      m.bare_reported = m.bare_reported || r.bare_line_ending;
      const bool rejecting = policy == BareLfPolicy::reject && !switched;
      if (!r.end_of_data && !(rejecting && r.bare_line_ending)) {
        FUZZ_CHECK(r.consumed == buffer.size());
      }
      if (!rejecting) FUZZ_CHECK(!r.bare_line_ending || r.consumed > 0 || r.end_of_data);
      buffer.erase(0, r.consumed);
      buffer_start += r.consumed;
      if (r.end_of_data) {
        FUZZ_CHECK(!(rejecting && r.bare_line_ending));
        m.end = buffer_start;
        // Over a whole message, at most two output bytes per input byte.
        const std::size_t start = messages.size() > 1 ? messages[messages.size() - 2].end : 0;
        FUZZ_CHECK(m.out.size() <= 2 * (m.end - start), input);
        messages.emplace_back();
        filter.reset();
        filter.set_policy(policy);
        switched = false;
        continue;
      }
      if (rejecting && r.bare_line_ending) {
        m.first_bare = buffer_start;
        switched = true;
        filter.set_policy(BareLfPolicy::normalize);
        continue;
      }
      break;
    }
  }
  FUZZ_CHECK(next == input.size());
  if (closed) FUZZ_CHECK(buffer.empty() && messages.back().out.empty());
  messages.pop_back();  // the one still open: empty when the input was closed
  return messages;
}

struct Expected {
  std::vector<std::string> lines;  // what the MTA should store, line by line
  std::size_t end = 0;
  std::optional<std::size_t> first_bare;  // where a reject stops
};

// The client's message starting at `start`, read by the rules in the header comment.
Expected model(std::string_view input, std::size_t start) {
  Expected e;
  std::size_t pos = start;
  bool canonical = true;
  for (;;) {
    const std::size_t k = input.find_first_of("\r\n", pos);
    FUZZ_CHECK(k != std::string_view::npos);  // the input always ends with kEnd
    const std::string_view content = input.substr(pos, k - pos);
    const bool crlf = input[k] == '\r' && k + 1 < input.size() && input[k + 1] == '\n';
    FUZZ_CHECK(crlf || input[k] == '\n' || k + 1 < input.size());
    const std::size_t after = crlf ? k + 2 : k + 1;
    if (canonical && content == "." && crlf) {
      e.end = after;
      return e;
    }
    if (!crlf && !e.first_bare) e.first_bare = input[k] == '\n' ? k : k + 1;
    std::string_view meant = content;
    if (canonical && !meant.empty() && meant.front() == '.' && !(meant == "." && !crlf)) {
      meant.remove_prefix(1);
    }
    e.lines.emplace_back(meant);
    canonical = crlf;
    pos = after;
  }
}

// What an MTA does with the filter's output: one line per CRLF, a leading dot removed, the
// final "." line being the end.
std::vector<std::string> unstuff(std::string_view out) {
  std::vector<std::string> lines;
  std::size_t pos = 0;
  for (;;) {
    const std::size_t crlf = out.find("\r\n", pos);
    FUZZ_CHECK(crlf != std::string_view::npos, out);
    std::string_view line = out.substr(pos, crlf - pos);
    pos = crlf + 2;
    if (line == ".") {
      FUZZ_CHECK(pos == out.size(), out);
      return lines;
    }
    if (!line.empty() && line.front() == '.') line.remove_prefix(1);
    lines.emplace_back(line);
  }
}

bool same(const std::vector<Message>& a, const std::vector<Message>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].out != b[i].out || a[i].end != b[i].end || a[i].first_bare != b[i].first_bare ||
        a[i].bare_reported != b[i].bare_reported) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string input(reinterpret_cast<const char*>(data), size);

  // Close the last message, as a client eventually must. What follows the first end of data
  // inside the appended "\r\n.\r\n" is always ".\r\n" or nothing, so that closes everything.
  {
    const auto whole = run(input, {input.size()}, BareLfPolicy::normalize, false);
    if (whole.empty() || whole.back().end != input.size()) input += kEnd;
  }

  // Every split gives the same result, per policy.
  std::vector<Message> reference[2];
  for (const BareLfPolicy policy : {BareLfPolicy::normalize, BareLfPolicy::reject}) {
    auto& ref = reference[policy == BareLfPolicy::reject];
    bool first = true;
    for (const auto& pieces : stp::fuzz::splits(input)) {
      auto messages = run(input, pieces, policy, true);
      if (first) {
        ref = std::move(messages);
        first = false;
      } else {
        FUZZ_CHECK(same(messages, ref), input);
      }
    }
  }

  // Reject, then normalize, writes what normalize writes; it only records where it stopped.
  auto rejected = reference[1];
  for (auto& m : rejected) m.first_bare.reset();
  FUZZ_CHECK(same(rejected, reference[0]), input);

  // What the MTA stores is what the client meant, and reject stops at the first bare ending.
  std::size_t start = 0;
  for (std::size_t i = 0; i < reference[0].size(); ++i) {
    const Message& m = reference[0][i];
    const Expected e = model(input, start);
    FUZZ_CHECK(m.end == e.end, input);
    FUZZ_CHECK(unstuff(m.out) == e.lines, input);
    FUZZ_CHECK(m.bare_reported == e.first_bare.has_value(), input);
    FUZZ_CHECK(reference[1][i].first_bare == e.first_bare, input);
    start = m.end;
  }
  FUZZ_CHECK(start == input.size(), input);
  return 0;
}
