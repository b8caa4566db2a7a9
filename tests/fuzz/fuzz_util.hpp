// What the fuzz targets share: an invariant check that aborts with a readable message, a
// deterministic way to cut an input into pieces (so "any split gives the same result" can be
// checked on every input), and the small escape syntax that lets text seeds carry any byte.
//
// Header-only and dependency-free on purpose: each target links only the pure sources it tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace stp::fuzz {

// Bytes as C-like text for a failure message: printable ASCII kept, the rest as \xHH.
inline std::string show(std::string_view bytes, std::size_t limit = 400) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char c : bytes.substr(0, limit)) {
    const auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b < 0x7f && b != '\\' && b != '"') {
      out += c;
    } else {
      out += "\\x";
      out += kHex[b >> 4];
      out += kHex[b & 0xf];
    }
  }
  if (bytes.size() > limit) out += "...";
  return out;
}

[[noreturn]] inline void fail(const char* condition, const char* file, int line,
                              std::string_view detail) {
  std::fprintf(stderr, "\nINVARIANT VIOLATED at %s:%d: %s\n", file, line, condition);
  if (!detail.empty()) std::fprintf(stderr, "  %s\n", show(detail, 2000).c_str());
  std::abort();
}

// FUZZ_CHECK(condition) or FUZZ_CHECK(condition, detail): `detail` is any string, shown escaped.
#define FUZZ_CHECK(condition, ...)                                                      \
  do {                                                                                  \
    if (!(condition)) {                                                                 \
      ::stp::fuzz::fail(#condition, __FILE__, __LINE__, std::string_view{__VA_ARGS__}); \
    }                                                                                   \
  } while (false)

// A finding that was reported but is not fixed yet can be looked past by name, so that a long
// run keeps searching: STP_FUZZ_KNOWN=name,name,... (see README.md, "Findings"). Without it
// every check is strict.
inline bool known(std::string_view finding) {
  static const std::string list = [] {
    const char* value = std::getenv("STP_FUZZ_KNOWN");
    return "," + std::string(value ? value : "") + ",";
  }();
  return list.find("," + std::string(finding) + ",") != std::string::npos;
}

// FNV-1a: a seed derived from the input, so a run is reproducible from the input alone.
inline std::uint64_t hash(std::string_view bytes) {
  std::uint64_t h = 14695981039346656037ull;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

// SplitMix64.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t bound) { return bound == 0 ? 0 : next() % bound; }

 private:
  std::uint64_t state_;
};

// Piece sizes that add up to `size`: mostly short, sometimes long, now and then empty (never
// two empty pieces in a row, so the list always ends).
inline std::vector<std::size_t> random_pieces(std::size_t size, std::uint64_t seed) {
  Random random(seed);
  std::vector<std::size_t> pieces;
  std::size_t left = size;
  bool last_empty = false;
  while (left > 0) {
    const std::uint64_t r = random.next();
    std::size_t n = 0;
    switch (r % 8) {
      case 0:
        n = last_empty ? 1 : 0;
        break;
      case 1:
      case 2:
      case 3:
      case 4:
        n = 1 + (r >> 8) % 4;
        break;
      case 5:
      case 6:
        n = 1 + (r >> 8) % 64;
        break;
      default:
        n = 1 + (r >> 8) % left;
        break;
    }
    if (n > left) n = left;
    last_empty = n == 0;
    pieces.push_back(n);
    left -= n;
  }
  return pieces;
}

// The three ways every streaming target feeds its input: whole, byte by byte, random pieces.
inline std::vector<std::vector<std::size_t>> splits(std::string_view input) {
  std::vector<std::vector<std::size_t>> all;
  all.push_back(input.empty() ? std::vector<std::size_t>{}
                              : std::vector<std::size_t>{input.size()});
  all.emplace_back(input.size(), 1);
  all.push_back(random_pieces(input.size(), hash(input)));
  return all;
}

// Seeds are text; `\n`, `\r`, `\t`, `\0`, `\\` and `\xHH` inside a field give any byte. A `\`
// before anything else stands for itself.
inline std::string unescape(std::string_view text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\' || i + 1 == text.size()) {
      out += text[i];
      continue;
    }
    const char c = text[i + 1];
    if (c == 'n' || c == 'r' || c == 't' || c == '0' || c == '\\') {
      out += c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c == '0' ? '\0' : '\\';
      ++i;
    } else if (c == 'x' && i + 3 < text.size() && hex(text[i + 2]) >= 0 && hex(text[i + 3]) >= 0) {
      out += static_cast<char>(hex(text[i + 2]) * 16 + hex(text[i + 3]));
      i += 3;
    } else {
      out += '\\';
    }
  }
  return out;
}

// `text` cut at each `separator`.
inline std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> fields;
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = text.find(separator, start);
    fields.push_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) return fields;
    start = end + 1;
  }
}

inline char upper(char c) {
  return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
}

inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (upper(a[i]) != upper(b[i])) return false;
  }
  return true;
}

}  // namespace stp::fuzz
