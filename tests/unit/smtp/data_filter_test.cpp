// The DATA content filter: end-of-data, smuggling, bare line endings, any split of the input.
#include "smtp/data_filter.hpp"

#include <gtest/gtest.h>

#include <random>

namespace stp {
namespace {

struct Filtered {
  std::string out;
  bool ended = false;
  bool bare = false;
  std::size_t consumed = 0;
};

// Feeds `input` in pieces of `piece` bytes (0: all at once).
Filtered run(std::string_view input, BareLfPolicy policy, std::size_t piece = 0) {
  DataFilter filter(policy);
  Filtered f;
  while (f.consumed < input.size() && !f.ended) {
    const auto n =
        piece == 0 ? input.size() - f.consumed : std::min(piece, input.size() - f.consumed);
    const auto r = filter.feed(input.substr(f.consumed, n), f.out);
    f.consumed += r.consumed;
    f.ended = r.end_of_data;
    f.bare = f.bare || r.bare_line_ending;
    if (r.bare_line_ending && policy == BareLfPolicy::reject) break;
    if (r.consumed < n && !r.end_of_data) break;
  }
  return f;
}

TEST(DataFilter, CanonicalMessagePassesUnchanged) {
  const std::string message = "Subject: x\r\n\r\nbody\r\n..leading dot\r\n.\r\n";
  const auto f = run(message + "QUIT\r\n", BareLfPolicy::reject);
  EXPECT_TRUE(f.ended);
  EXPECT_FALSE(f.bare);
  EXPECT_EQ(f.out, message);
  EXPECT_EQ(f.consumed, message.size());  // QUIT stays for the command loop
}

TEST(DataFilter, EmptyMessage) {
  const auto f = run(".\r\n", BareLfPolicy::reject);
  EXPECT_TRUE(f.ended);
  EXPECT_EQ(f.out, ".\r\n");
}

TEST(DataFilter, LfDotLfDoesNotEndTheMessage) {
  const std::string smuggle = "a\r\n\n.\nMAIL FROM:<evil>\r\n\r\n.\r\n";
  const auto f = run(smuggle, BareLfPolicy::normalize);
  EXPECT_TRUE(f.ended);
  EXPECT_TRUE(f.bare);
  EXPECT_EQ(f.out, "a\r\n\r\n..\r\nMAIL FROM:<evil>\r\n\r\n.\r\n");
  // Exactly one end of data in what the MTA sees.
  EXPECT_EQ(f.out.find("\r\n.\r\n"), f.out.size() - 5);
}

TEST(DataFilter, EveryNonCanonicalDotLineIsStuffed) {
  struct Case {
    std::string in, out;
  };
  const Case cases[] = {
      {"x\r\n.\n", "x\r\n..\r\n"},    // CRLF . LF
      {"x\n.\r\n", "x\r\n..\r\n"},    // LF . CRLF
      {"x\r.\ry", "x\r\n..\r\ny"},    // CR . CR
      {"x\r\n.\ry", "x\r\n..\r\ny"},  // CRLF . CR
      {"x\n.foo", "x\r\n..foo"},      // dotted line after a bare LF
      {"x\r\n.foo", "x\r\n.foo"},     // client-stuffed line passes
      {"a\rb", "a\r\nb"},             // bare CR
      {"a\r\r\nb", "a\r\n\r\nb"},     // CR before CRLF
  };
  for (const auto& c : cases) {
    const auto f = run(c.in, BareLfPolicy::normalize);
    EXPECT_FALSE(f.ended) << c.in;
    EXPECT_EQ(f.out, c.out) << c.in;
  }
}

TEST(DataFilter, RejectStopsAtFirstBareLineEnding) {
  const auto f = run("good\r\nbad\nmore\r\n.\r\n", BareLfPolicy::reject);
  EXPECT_TRUE(f.bare);
  EXPECT_FALSE(f.ended);
  EXPECT_EQ(f.consumed, 9u);  // "good\r\nbad", stopped before the LF
}

TEST(DataFilter, SwitchingToNormalizeAfterRejectFindsTheEnd) {
  DataFilter filter(BareLfPolicy::reject);
  std::string out;
  std::string_view input = "bad\nline\r\n.\r\nQUIT\r\n";
  auto r = filter.feed(input, out);
  ASSERT_TRUE(r.bare_line_ending);
  input.remove_prefix(r.consumed);
  filter.set_policy(BareLfPolicy::normalize);
  r = filter.feed(input, out);
  EXPECT_TRUE(r.end_of_data);
  EXPECT_EQ(input.substr(r.consumed), "QUIT\r\n");
}

TEST(DataFilter, ResultDoesNotDependOnHowInputIsSplit) {
  std::mt19937 random(12345);
  const char alphabet[] = {'\r', '\n', '.', 'a', 'b'};
  for (int round = 0; round < 2000; ++round) {
    std::string input;
    const int length = static_cast<int>(random() % 40);
    for (int i = 0; i < length; ++i) input += alphabet[random() % sizeof alphabet];
    input += "\r\n.\r\n";
    const auto whole = run(input, BareLfPolicy::normalize);
    for (std::size_t piece : {1u, 2u, 3u, 7u}) {
      const auto split = run(input, BareLfPolicy::normalize, piece);
      ASSERT_EQ(split.out, whole.out) << "piece " << piece;
      ASSERT_EQ(split.ended, whole.ended);
      ASSERT_EQ(split.consumed, whole.consumed);
    }
    // What the MTA sees has exactly one end, at its end; no bare CR or LF anywhere.
    ASSERT_TRUE(whole.ended);
    ASSERT_EQ(whole.out.find("\r\n.\r\n") + 5 == whole.out.size() || whole.out == ".\r\n", true)
        << input;
    for (std::size_t i = 0; i < whole.out.size(); ++i) {
      if (whole.out[i] == '\n') {
        ASSERT_TRUE(i > 0 && whole.out[i - 1] == '\r');
      }
      if (whole.out[i] == '\r') {
        ASSERT_TRUE(i + 1 < whole.out.size() && whole.out[i + 1] == '\n');
      }
    }
    ASSERT_LE(whole.out.size(), DataFilter::max_output(input.size()));
  }
}

}  // namespace
}  // namespace stp
