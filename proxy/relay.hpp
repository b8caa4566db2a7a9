// Message content from a client to an Upstream, in bounded pieces, for both directions: DATA
// content (made canonical by a DataFilter, up to and with its final ".") and BDAT chunks
// (exactly their size). The session decides what is sent and answers the client; this only
// moves the bytes, and makes sure a client whose bytes go nowhere (refused, or the next hop
// gone) still has to finish within one timeout in all, so a trickle cannot hold a session.
//
// Source is the session's reading side:
//   InputBuffer& input();                                          what is buffered
//   awaitable<bool> read_more(Clock::time_point deadline);         false: the session ends
#pragma once

#include "proxy/input_buffer.hpp"
#include "proxy/upstream.hpp"
#include "smtp/data_filter.hpp"
#include "smtp/received_header.hpp"

#include <boost/asio/awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace stp::relay {

using Clock = std::chrono::steady_clock;

struct ContentResult {
  enum class Status : std::uint8_t {
    relayed,           // the end of the content was read (and sent, unless the hop is gone)
    source_ended,      // the client went away, or its time ran out: nothing more to say
    bare_line_ending,  // refused (BareLfPolicy::reject): the hop's transaction was abandoned
  } status;
  bool normalized = false;  // a bare CR or LF was made a CRLF (with status relayed)
};

// The end of refused content (its bytes go nowhere): a line of a single "." between line
// breaks of any kind, CR, LF or CRLF, so that a client that ends its lines with a bare LF is
// answered when it has finished, not at its timeout. Starts at the bare line ending.
class LooseEnd {
 public:
  struct Scan {
    std::size_t consumed = 0;
    bool found = false;
  };
  Scan feed(std::string_view input) {
    for (std::size_t i = 0; i < input.size(); ++i) {
      const char c = input[i];
      const bool line_break = c == '\r' || c == '\n';
      if (state_ == State::dot && line_break) {
        const bool crlf = c == '\r' && i + 1 < input.size() && input[i + 1] == '\n';
        return {i + (crlf ? 2 : 1), true};
      }
      state_ = line_break                                ? State::line_start
               : c == '.' && state_ == State::line_start ? State::dot
                                                         : State::middle;
    }
    return {input.size(), false};
  }

 private:
  enum class State : std::uint8_t { middle, line_start, dot };
  State state_ = State::middle;
};

// DATA content up to its final ".": `header` (the trace header, or empty) goes in front of
// it; `out` is the caller's buffer for what goes to `hop`, empty when this returns. With
// BareLfPolicy::reject a bare line ending abandons the hop's transaction (its connection is
// closed) and the rest is read only to find the end, in any form a client that ends its
// lines so would write it (LooseEnd): the caller answers then, and closes.
template <class Source>
boost::asio::awaitable<ContentResult> data(Source& source, Upstream& hop, DataFilter& filter,
                                           std::string header, BareLfPolicy policy,
                                           Clock::duration trickle_limit, std::string& out) {
  filter.reset();
  filter.set_policy(policy);
  ContentResult result{ContentResult::Status::relayed};
  LooseEnd loose_end;
  auto& input = source.input();
  auto deadline = Clock::time_point::max();
  while (true) {
    if (hop.lost() && deadline == Clock::time_point::max()) {
      deadline = Clock::now() + trickle_limit;
    }
    // The header's end depends on the content's first line (starts_with_continuation).
    const auto continuation =
        header.empty() ? std::optional(false) : starts_with_continuation(input.view(), true);
    if ((input.empty() || !continuation) && !co_await source.read_more(deadline)) {
      out.clear();
      co_return ContentResult{ContentResult::Status::source_ended, result.normalized};
    }
    if (!continuation) continue;
    out.clear();
    if (!header.empty()) {
      if (*continuation) header += "\r\n";
      out.swap(header);
      header.clear();
    }
    if (result.status == ContentResult::Status::bare_line_ending) {
      const auto scanned = loose_end.feed(input.view());
      input.consume(scanned.consumed);
      if (scanned.found) break;
      continue;
    }
    const auto fed = filter.feed(input.view(), out);
    input.consume(fed.consumed);
    if (fed.bare_line_ending) {
      if (policy == BareLfPolicy::reject) {
        result.status = ContentResult::Status::bare_line_ending;
        hop.abandon();
        out.clear();
        continue;
      }
      result.normalized = true;
    }
    if (!out.empty() && !hop.lost()) co_await hop.write(out);
    if (fed.end_of_data) break;
  }
  out.clear();
  co_return result;
}

// One BDAT chunk of `size` bytes: `out` holds what goes before it (commands, the BDAT line,
// the trace header) and is sent with its first bytes; with `forward` false the chunk is read
// and dropped. False when the source ended first.
template <class Source>
boost::asio::awaitable<bool> chunk(Source& source, Upstream& hop, std::uint64_t size, bool forward,
                                   Clock::duration trickle_limit, std::string& out) {
  auto& input = source.input();
  std::uint64_t remaining = size;
  auto take_buffered = [&] {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, input.size()));
    remaining -= n;
    return n;
  };
  const auto first = take_buffered();
  if (forward) out.append(input.view().substr(0, first));
  input.consume(first);
  if (!out.empty()) co_await hop.write(out);
  out.clear();
  auto deadline = Clock::time_point::max();
  while (remaining > 0) {
    if ((!forward || hop.lost()) && deadline == Clock::time_point::max()) {
      deadline = Clock::now() + trickle_limit;
    }
    if (!co_await source.read_more(deadline)) co_return false;
    const auto n = take_buffered();
    if (forward && !hop.lost()) co_await hop.write(input.view().substr(0, n));
    input.consume(n);
  }
  co_return true;
}

}  // namespace stp::relay
