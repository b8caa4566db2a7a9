// DATA content filter; see data_filter.hpp for the rules.
#include "proxy/data_filter.hpp"

#include <cstring>

namespace stp {

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
        // Fast path: copy the run up to the next CR or LF.
        const char* q = p;
        while (q < end && *q != '\r' && *q != '\n') ++q;
        out.append(p, static_cast<std::size_t>(q - p));
        p = q;
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
