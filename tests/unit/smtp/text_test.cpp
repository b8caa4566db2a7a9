// The ASCII text helpers: folding only A-Z, trimming only the given bytes.
#include "smtp/text.hpp"

#include <gtest/gtest.h>

namespace stp {
namespace {

TEST(Text, LowerFoldsOnlyAsciiLetters) {
  EXPECT_EQ(text::lower("MX1.Example.NET"), "mx1.example.net");
  EXPECT_EQ(text::lower("@[]^_`{"), "@[]^_`{");      // the bytes around A-Z and a-z
  EXPECT_EQ(text::lower("\xC3\x84Z"), "\xC3\x84z");  // UTF-8 passes unchanged
  EXPECT_EQ(text::lower(""), "");
}

TEST(Text, TrimDropsTheGivenBytesAtBothEndsOnly) {
  EXPECT_EQ(text::trim(" \t a b \r\n"), "a b");
  EXPECT_EQ(text::trim(" \r\n\t "), "");
  EXPECT_EQ(text::trim(""), "");
  EXPECT_EQ(text::trim("x"), "x");
  EXPECT_EQ(text::trim(" a\r", " \t"), "a\r");  // CR is kept when not named
  EXPECT_EQ(text::trim("\va\v"), "\va\v");      // vertical tab is no whitespace here
}

}  // namespace
}  // namespace stp
