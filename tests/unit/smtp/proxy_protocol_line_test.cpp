// Unit tests for proxy_protocol::is_header_line: a PROXY v1 header where a command is read,
// in any case, and only as a whole word.
#include "smtp/proxy_protocol.hpp"

#include <gtest/gtest.h>

namespace stp::proxy_protocol {
namespace {

TEST(HeaderLine, TheWordProxyAloneOrBeforeASpace) {
  EXPECT_TRUE(is_header_line("PROXY TCP4 192.0.2.1 192.0.2.2 1234 25"));
  EXPECT_TRUE(is_header_line("proxy unknown"));
  EXPECT_TRUE(is_header_line("PROXY"));
  EXPECT_FALSE(is_header_line("PROXYX TCP4"));
  EXPECT_FALSE(is_header_line("PROX"));
  EXPECT_FALSE(is_header_line(" PROXY TCP4"));
  EXPECT_FALSE(is_header_line("MAIL FROM:<proxy@example.org>"));
}

}  // namespace
}  // namespace stp::proxy_protocol
