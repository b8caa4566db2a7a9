// DATA content filter; see data_filter.hpp for the rules.
#include "smtp/data_filter.hpp"

#include <cstring>

namespace stp {

namespace {

const char* find_byte(const char* from, const char* end, char c) {
  const void* hit = std::memchr(from, c, static_cast<std::size_t>(end - from));
  return hit ? static_cast<const char*>(hit) : end;
}

struct ScanStop {
  const char* at;
  bool at_line_start;  // `at` follows a CRLF and is the end or a '.', CR or LF
};

// From inside a line, skips every byte that passes unchanged: the rest of this line and whole
// CRLF-ended lines after it that start with an ordinary byte. Stops at a CR or LF that is not
// part of a plain CRLF, at the start of a line beginning with '.', CR or LF, or at the end.
// Two memchr() per line instead of a test per byte: this is where a message's time goes.
ScanStop scan_clean_lines(const char* p, const char* end) {
  while (p < end) {
    const char* lf = find_byte(p, end, '\n');
    const char* cr = find_byte(p, lf, '\r');
    if (lf == end || cr != lf - 1) return {cr < lf ? cr : lf, false};
    p = lf + 1;
    if (p == end || *p == '.' || *p == '\r' || *p == '\n') return {p, true};
  }
  return {p, false};
}

}  // namespace

DataFilter::Result DataFilter::feed(std::string_view input, std::string& out) {
  Result result;
  const char* p = input.data();
  const char* const end = p + input.size();

  // A bare line ending: report it; with reject, stop before emitting anything for it.
  // Returns true when the caller must stop.
  auto bare = [&]() {
    result.bare_line_ending = true;
    return policy_ == BareLfPolicy::reject;
  };
  auto finish = [&](const char* at) {
    result.consumed = static_cast<std::size_t>(at - input.data());
    return result;
  };

  while (p < end) {
    switch (state_) {
      case State::middle: {
        // Fast path: the bytes up to the first one that needs a decision go out as one run.
        const ScanStop stop = scan_clean_lines(p, end);
        out.append(p, static_cast<std::size_t>(stop.at - p));
        p = stop.at;
        if (stop.at_line_start) {
          state_ = State::line_start;
          canonical_start_ = true;
          break;
        }
        if (p == end) break;
        if (*p == '\r') {
          state_ = State::cr;
          ++p;
        } else {  // bare LF ends the line
          if (bare()) return finish(p);
          out += "\r\n";
          ++p;
          state_ = State::line_start;
          canonical_start_ = false;
        }
        break;
      }
      case State::line_start: {
        const char c = *p;
        if (c == '.') {
          ++p;
          if (canonical_start_) {
            state_ = State::dot;  // the client stuffed it, or it is the end: wait and see
          } else {
            out += "..";  // the client did not see a line start here; the MTA will
            state_ = State::middle;
          }
        } else if (c == '\r') {
          ++p;
          state_ = State::cr;
        } else if (c == '\n') {
          if (bare()) return finish(p);
          ++p;
          out += "\r\n";
          canonical_start_ = false;
        } else {
          state_ = State::middle;
        }
        break;
      }
      case State::dot: {
        const char c = *p;
        if (c == '\r') {
          ++p;
          state_ = State::dot_cr;
        } else if (c == '\n') {  // "." ended by a bare LF must not become ".<CRLF>"
          if (bare()) return finish(p);
          ++p;
          out += "..\r\n";
          state_ = State::line_start;
          canonical_start_ = false;
        } else {
          out += '.';
          state_ = State::middle;
        }
        break;
      }
      case State::dot_cr: {
        if (*p == '\n') {
          ++p;
          out += ".\r\n";
          state_ = State::line_start;
          canonical_start_ = true;
          result.end_of_data = true;
          return finish(p);
        }
        // ".<CR>" then something else: a line "." ended by a bare CR.
        if (bare()) return finish(p);
        out += "..\r\n";
        state_ = State::line_start;
        canonical_start_ = false;
        break;
      }
      case State::cr: {
        if (*p == '\n') {
          ++p;
          out += "\r\n";
          state_ = State::line_start;
          canonical_start_ = true;
        } else {  // bare CR ends the line; the byte after it starts the next one
          if (bare()) return finish(p);
          out += "\r\n";
          state_ = State::line_start;
          canonical_start_ = false;
        }
        break;
      }
    }
  }
  return finish(p);
}

}  // namespace stp
