// The DATA content filter: finds the end of a message and makes the MTA see exactly the
// message the client sent, with exactly one end.
//
// Only the canonical <CRLF>.<CRLF> (or ".<CRLF>" as the very first line) ends a message, so
// <LF>.<LF> and friends cannot smuggle a second message past us to an MTA that is lenient
// about line endings (CVE-2023-51764 class). A bare LF or bare CR is either reported (policy
// reject) or turned into CRLF (policy normalize); in the latter case a line that now starts
// with "." after a non-canonical line break is dot-stuffed, so the MTA strips exactly what the
// client meant and never sees an end of data the client did not send.
//
// Trusts nothing: the input is raw client bytes in pieces of any size. Streams: keeps no
// more than two bytes of state; output is at most 2 * input + 4 bytes per call (the two held
// bytes ".<CR>" come out as "..<CRLF>" when a bare CR turns out to follow the dot).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace stp {

// What a bare LF or CR in message content becomes (--bare-lf).
enum class BareLfPolicy { normalize, reject };

class DataFilter {
 public:
  explicit DataFilter(BareLfPolicy policy) : policy_(policy) {}

  struct Result {
    std::size_t consumed = 0;       // input bytes used; bytes after the end of data are left
    bool end_of_data = false;       // the final ".<CRLF>" was consumed and appended
    bool bare_line_ending = false;  // a bare CR or LF was seen (in this call)
  };

  // Appends to `out` the canonical form of `input`. With policy reject, stops at the first
  // bare line ending (what was appended before it is still valid content).
  Result feed(std::string_view input, std::string& out);

  // With reject, a caller that goes on reading to find the end switches to normalize.
  void set_policy(BareLfPolicy policy) { policy_ = policy; }

  // Start on a new message.
  void reset() {
    state_ = State::line_start;
    canonical_start_ = true;
  }

  // How many bytes `out` may grow by in one feed() of `input_size` bytes.
  static std::size_t max_output(std::size_t input_size) { return 2 * input_size + 4; }

 private:
  enum class State : std::uint8_t {
    line_start,  // at the start of a line
    dot,         // "." held at a canonical line start
    dot_cr,      // ".\r" held at a canonical line start
    middle,      // inside a line
    cr,          // "\r" held: CRLF or bare CR?
  };
  // Where one step of feed() left the input, and whether feed() stops there (at the end of
  // data, or at a bare line ending with policy reject).
  struct Step {
    const char* next;
    bool stop = false;
  };
  // One step from `p` (before `end`) in each state; each appends what it decided to `out`.
  Step in_line(const char* p, const char* end, std::string& out, Result& result);
  Step at_line_start(const char* p, std::string& out, Result& result);
  Step after_dot(const char* p, std::string& out, Result& result);
  Step after_dot_cr(const char* p, std::string& out, Result& result);
  Step after_cr(const char* p, std::string& out, Result& result);
  // Records a bare line ending; true when the policy is reject (stop before it).
  bool stops_at_bare(Result& result) const {
    result.bare_line_ending = true;
    return policy_ == BareLfPolicy::reject;
  }

  BareLfPolicy policy_;
  State state_ = State::line_start;
  bool canonical_start_ = true;  // the current line began after a CRLF (or at the start)
};

}  // namespace stp
