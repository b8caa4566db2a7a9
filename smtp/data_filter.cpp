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
  while (p < end) {
    Step step{p};
    switch (state_) {
      case State::middle:
        step = in_line(p, end, out, result);
        break;
      case State::line_start:
        step = at_line_start(p, out, result);
        break;
      case State::dot:
        step = after_dot(p, out, result);
        break;
      case State::dot_cr:
        step = after_dot_cr(p, out, result);
        break;
      case State::cr:
        step = after_cr(p, out, result);
        break;
    }
    p = step.next;
    if (step.stop) break;
  }
  result.consumed = static_cast<std::size_t>(p - input.data());
  return result;
}

DataFilter::Step DataFilter::in_line(const char* p, const char* end, std::string& out,
                                     Result& result) {
  // Fast path: the bytes up to the first one that needs a decision go out as one run.
  const ScanStop stop = scan_clean_lines(p, end);
  out.append(p, static_cast<std::size_t>(stop.at - p));
  p = stop.at;
  if (stop.at_line_start) {
    state_ = State::line_start;
    canonical_start_ = true;
    return {p};
  }
  if (p == end) return {p};
  if (*p == '\r') {
    state_ = State::cr;
    return {p + 1};
  }
  // A bare LF ends the line.
  if (stops_at_bare(result)) return {p, true};
  out += "\r\n";
  state_ = State::line_start;
  canonical_start_ = false;
  return {p + 1};
}

DataFilter::Step DataFilter::at_line_start(const char* p, std::string& out, Result& result) {
  const char c = *p;
  if (c == '.') {
    if (canonical_start_) {
      state_ = State::dot;  // the client stuffed it, or it is the end: wait and see
    } else {
      out += "..";  // the client did not see a line start here; the MTA will
      state_ = State::middle;
    }
    return {p + 1};
  }
  if (c == '\r') {
    state_ = State::cr;
    return {p + 1};
  }
  if (c == '\n') {
    if (stops_at_bare(result)) return {p, true};
    out += "\r\n";
    canonical_start_ = false;
    return {p + 1};
  }
  state_ = State::middle;
  return {p};
}

DataFilter::Step DataFilter::after_dot(const char* p, std::string& out, Result& result) {
  const char c = *p;
  if (c == '\r') {
    state_ = State::dot_cr;
    return {p + 1};
  }
  if (c == '\n') {  // "." ended by a bare LF must not become ".<CRLF>"
    if (stops_at_bare(result)) return {p, true};
    out += "..\r\n";
    state_ = State::line_start;
    canonical_start_ = false;
    return {p + 1};
  }
  out += '.';
  state_ = State::middle;
  return {p};
}

DataFilter::Step DataFilter::after_dot_cr(const char* p, std::string& out, Result& result) {
  if (*p == '\n') {
    out += ".\r\n";
    state_ = State::line_start;
    canonical_start_ = true;
    result.end_of_data = true;
    return {p + 1, true};
  }
  // ".<CR>" then something else: a line "." ended by a bare CR.
  if (stops_at_bare(result)) return {p, true};
  out += "..\r\n";
  state_ = State::line_start;
  canonical_start_ = false;
  return {p};
}

DataFilter::Step DataFilter::after_cr(const char* p, std::string& out, Result& result) {
  if (*p == '\n') {
    out += "\r\n";
    state_ = State::line_start;
    canonical_start_ = true;
    return {p + 1};
  }
  // A bare CR ends the line; the byte after it starts the next one.
  if (stops_at_bare(result)) return {p, true};
  out += "\r\n";
  state_ = State::line_start;
  canonical_start_ = false;
  return {p};
}

}  // namespace stp
