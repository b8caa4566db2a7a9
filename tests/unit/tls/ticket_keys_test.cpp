// The session ticket key file: its lines (nginx's 80-byte layout in base64) and what refuses
// the whole file.
#include "tls/ticket_keys.hpp"
#include "tls/ticket_key_file.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <numeric>
#include <stdexcept>
#include <string>

namespace stp::tls {
namespace {

// 80 bytes first, first+1, ... in base64 (108 characters).
std::string key_line(unsigned char first) {
  unsigned char bytes[80];
  std::iota(std::begin(bytes), std::end(bytes), first);
  std::string out(4 * ((sizeof bytes + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes, sizeof bytes);
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string error_of(const std::string& text) {
  try {
    parse_ticket_keys(text);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

TEST(TicketKeys, NameHmacAndAesInNginxsOrder) {
  const auto keys = parse_ticket_keys(key_line(0) + "\n");
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].name[0], 0);
  EXPECT_EQ(keys[0].name[15], 15);
  EXPECT_EQ(keys[0].hmac[0], 16);
  EXPECT_EQ(keys[0].hmac[31], 47);
  EXPECT_EQ(keys[0].aes[0], 48);
  EXPECT_EQ(keys[0].aes[31], 79);
}

TEST(TicketKeys, KeysInOrderBlankLinesCommentsAndCrlfSkipped) {
  const auto keys = parse_ticket_keys("# rotated 2026-12-07\r\n\r\n  " + key_line(100) + " \r\n" +
                                      key_line(0) + "\n\n");
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].name[0], 100);  // the first encrypts
  EXPECT_EQ(keys[1].name[0], 0);
}

TEST(TicketKeys, ABadLineRefusesTheFileNamingTheLine) {
  const std::string good = key_line(0);
  EXPECT_EQ(error_of(good + "\n" + good.substr(0, 64) + "\n"),
            "line 2: not a key (80 bytes in base64 on one line: openssl rand 80 | base64 -w0)");
  EXPECT_NE(error_of("#\n" + good.substr(0, 107) + "*\n").find("line 2:"), std::string::npos);
  std::string padded_early = good;
  padded_early[50] = '=';
  EXPECT_NE(error_of(padded_early).find("line 1:"), std::string::npos);
  EXPECT_NE(error_of(good + good).find("line 1:"), std::string::npos);  // 160 bytes on a line
  EXPECT_EQ(error_of(good + "\n" + good + "\n"),
            "line 2: a key named like an earlier one (its first 16 bytes)");
  EXPECT_EQ(error_of("# nothing\n\n"), "no key in it");
  EXPECT_EQ(error_of(""), "no key in it");
}

TEST(TicketKeys, AMissingFileNamesTheFlag) {
  try {
    TicketKeys::from_file("/nonexistent/ticket-keys");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "--tls-ticket-key-file: cannot read /nonexistent/ticket-keys");
  }
}

}  // namespace
}  // namespace stp::tls
