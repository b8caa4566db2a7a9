// Fuzzes smtp::scan_reply (smtp/smtp_parse.hpp): MTA replies, multi-line ones included, read
// one after another from a buffer the way the session reads pipelined replies.
//
// Input: bytes 0 and 1 give max_reply_length (big-endian; 0xFFFF for the session's 16 KiB);
// the rest is what the MTA sends.
//
// Checks, for each reply in turn:
// - complete: the length covers whole lines only (it ends on an LF), is at most the limit, and
//   every line in it is "<code>-..." but the last, which is "<code>" or "<code> ...", with one
//   code from 200 to 599 (the one returned); the same reply with anything after it, or on its
//   own, scans the same; any shorter prefix of it needs more;
// - need_more: the buffer holds at most max_reply_length bytes (the session's buffer stays
//   bounded), every complete line in it is a continuation line of one code, and no line is
//   longer than the limit;
// - malformed: a reading line by line agrees that something is wrong.
#include "fuzz_util.hpp"
#include "smtp/smtp_parse.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using stp::smtp::ReplyScan;

bool digit(char c) {
  return c >= '0' && c <= '9';
}

// Line by line: where the first reply ends and with which code, or why it cannot yet.
ReplyScan expected_scan(std::string_view input, std::size_t max) {
  int code = 0;
  std::size_t start = 0;
  for (;;) {
    const std::size_t lf = input.find('\n', start);
    if (lf == std::string_view::npos) {
      return {input.size() <= max ? ReplyScan::Status::need_more : ReplyScan::Status::malformed};
    }
    if (lf + 1 > max) return {ReplyScan::Status::malformed};
    std::string_view line = input.substr(start, lf - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() < 3 || !digit(line[0]) || !digit(line[1]) || !digit(line[2]) || line[0] < '2' ||
        line[0] > '5') {
      return {ReplyScan::Status::malformed};
    }
    const int line_code = std::stoi(std::string(line.substr(0, 3)));
    if (code != 0 && code != line_code) return {ReplyScan::Status::malformed};
    code = line_code;
    start = lf + 1;
    if (line.size() == 3 || line[3] == ' ') return {ReplyScan::Status::complete, start, code};
    if (line[3] != '-') return {ReplyScan::Status::malformed};
  }
}

bool same(const ReplyScan& a, const ReplyScan& b) {
  if (a.status != b.status) return false;
  return a.status != ReplyScan::Status::complete || (a.length == b.length && a.code == b.code);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t selector = static_cast<std::size_t>(data[0]) << 8 | data[1];
  const std::size_t max = selector == 0xFFFF ? 16 * 1024 : selector;
  std::string_view input(reinterpret_cast<const char*>(data) + 2, size - 2);
  stp::fuzz::Random random(stp::fuzz::hash(input));

  while (true) {
    const ReplyScan scan = stp::smtp::scan_reply(input, max);
    FUZZ_CHECK(same(scan, expected_scan(input, max)), input);
    if (scan.status == ReplyScan::Status::need_more) {
      FUZZ_CHECK(input.size() <= max, input);
      return 0;
    }
    if (scan.status == ReplyScan::Status::malformed) return 0;

    FUZZ_CHECK(scan.length > 0 && scan.length <= input.size() && scan.length <= max, input);
    FUZZ_CHECK(scan.code >= 200 && scan.code <= 599, input);
    const std::string_view reply = input.substr(0, scan.length);
    FUZZ_CHECK(reply.back() == '\n', reply);
    const std::string code = std::to_string(scan.code);
    const auto lines = stp::fuzz::split(reply.substr(0, reply.size() - 1), '\n');
    for (std::size_t i = 0; i < lines.size(); ++i) {
      std::string_view line = lines[i];
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      FUZZ_CHECK(line.substr(0, 3) == code, reply);
      if (i + 1 < lines.size()) {
        FUZZ_CHECK(line.size() > 3 && line[3] == '-', reply);
      } else {
        FUZZ_CHECK(line.size() == 3 || line[3] == ' ', reply);
      }
    }

    // Only the reply's own bytes decide.
    FUZZ_CHECK(same(stp::smtp::scan_reply(reply, max), scan), reply);
    const std::string longer = std::string(reply) + "x\r\n250";
    FUZZ_CHECK(same(stp::smtp::scan_reply(longer, max), scan), reply);
    const std::size_t cut = random.below(scan.length);
    const ReplyScan partial = stp::smtp::scan_reply(reply.substr(0, cut), max);
    FUZZ_CHECK(partial.status == ReplyScan::Status::need_more, reply.substr(0, cut));

    input.remove_prefix(scan.length);
  }
}
