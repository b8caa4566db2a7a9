// MTA-STS texts as RFC 8461 gives them (its section 3 examples), what is refused, and which
// MX hosts a policy's patterns match.
#include "outbound/mta_sts_policy.hpp"

#include "dns/records.hpp"

#include <gtest/gtest.h>

namespace stp::outbound {
namespace {

std::optional<StsPolicy> parse(std::string_view text, std::string* error = nullptr) {
  return parse_sts_policy(text, error);
}

TEST(StsPolicy, TheRfcExampleIsRead) {
  const auto policy = parse(
      "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
      "mx: backupmx.example.com\r\nmax_age: 604800\r\n");
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->mode, StsMode::enforce);
  EXPECT_EQ(policy->max_age, std::chrono::seconds(604800));
  EXPECT_EQ(policy->mx, (std::vector<std::string>{"mail.example.com", "*.example.net",
                                                  "backupmx.example.com"}));
  EXPECT_EQ(policy->lines.size(), 6u);
  EXPECT_EQ(policy->lines[2], "mx: mail.example.com");
}

TEST(StsPolicy, LineEndsSpacesCaseAndExtensions) {
  const auto policy = parse(
      "version:STSv1\nmode:   testing  \nmx: MX.Example.COM.\nmax_age: 86400\n"
      "x-note: caf\xc3\xa9 ok\n\n\n");
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->mode, StsMode::testing);
  EXPECT_EQ(policy->mx, (std::vector<std::string>{"mx.example.com"}));
}

TEST(StsPolicy, TheKeptFileReadsBackToTheWholePolicy) {
  // Lines beyond what TLS reports keep (a long extension first, many mx patterns, max_age
  // last): the file kept across restarts still holds every pattern and the max_age.
  std::string text =
      "version: STSv1\r\nx_note: " + std::string(5000, 'n') + "\r\nmode: enforce\r\n";
  for (int i = 0; i < 63; ++i) text += "mx: mx" + std::to_string(i) + ".example.com\r\n";
  text += "mx: *.Backup.Example.com.\r\nmax_age: 9999999999\r\n";
  const auto policy = parse_sts_policy(text);
  ASSERT_TRUE(policy);
  const auto file = sts_policy_file(*policy);
  const auto again = parse_sts_policy(file);
  ASSERT_TRUE(again) << file;
  EXPECT_EQ(again->mode, StsMode::enforce);
  EXPECT_EQ(again->mx, policy->mx);
  EXPECT_EQ(again->mx.size(), 64u);
  EXPECT_EQ(again->mx.back(), "*.backup.example.com");
  EXPECT_EQ(again->max_age, kMaxStsMaxAge);
}

TEST(StsPolicy, TheFirstOfARepeatedKeyCounts) {
  const auto policy = parse(
      "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 5\nmax_age: 9\n");
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->mode, StsMode::testing);
  EXPECT_EQ(policy->max_age, std::chrono::seconds(5));
}

TEST(StsPolicy, ModeNoneNeedsNoMx) {
  const auto policy = parse("version: STSv1\nmode: none\nmax_age: 86400\n");
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->mode, StsMode::none);
}

TEST(StsPolicy, MaxAgeIsCutToAYear) {
  const auto policy = parse("version: STSv1\nmode: none\nmax_age: 9999999999\n");
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->max_age, kMaxStsMaxAge);
}

TEST(StsPolicy, WhatIsNotAPolicyIsRefusedWithWhy) {
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"mode: enforce\nmx: a.example\nmax_age: 5\n", "no version: STSv1"},
      {"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 5\n", "version is not STSv1"},
      {"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 5\n",
       "mode is not enforce, testing or none"},
      {"version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"},
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -5\n",
       "max_age is not 1 to 10 digits"},
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
       "max_age is not 1 to 10 digits"},
      {"version: STSv1\nmode: enforce\nmax_age: 5\n", "no mx with mode enforce"},
      {"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 5\n", "a malformed mx pattern"},
      {"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 5\n", "a malformed mx pattern"},
      {"version: STSv1\nmode: enforce\nmx: a.example b.example\nmax_age: 5\n",
       "a malformed mx pattern"},
      {"version: STSv1\nmode enforce\nmx: a.example\nmax_age: 5\n", "a line without a colon"},
      {"version: STSv1\nmode: enforce\x01\nmx: a.example\nmax_age: 5\n",
       "a control character in a line"},
      {"<html>\n<body>404</body>\n", "a line without a colon"},
  };
  for (const auto& [text, why] : cases) {
    std::string error;
    EXPECT_FALSE(parse(text, &error)) << text;
    EXPECT_EQ(error, why) << text;
  }
  std::string error;
  EXPECT_FALSE(parse(std::string(kMaxStsPolicySize + 1, 'a'), &error));
  EXPECT_EQ(error, "longer than 64 KiB");
  for (const std::string_view bad : {"x-ext: \xff", "x-ext: \xc0\xaf", "x-ext: \xed\xa0\x80",
                                     "x-ext: caf\xc3", "mode\xe9: enforce"}) {
    const std::string text = "version: STSv1\nmode: none\nmax_age: 5\n" + std::string(bad) + "\n";
    EXPECT_FALSE(parse(text, &error)) << text;
    EXPECT_EQ(error, "a line that is not UTF-8") << text;
  }
  std::string many = "version: STSv1\nmode: enforce\nmax_age: 5\n";
  for (int i = 0; i < 65; ++i) many += "mx: mx" + std::to_string(i) + ".example\n";
  EXPECT_FALSE(parse(many, &error));
  EXPECT_EQ(error, "more than 64 mx patterns");
}

TEST(StsPolicy, OnlyTheFirstFourKibOfLinesAreKeptForReports) {
  std::string text = "version: STSv1\nmode: testing\nmx: a.example\nmax_age: 5\n";
  for (int i = 0; i < 100; ++i)
    text += "x-pad" + std::to_string(i) + ": " + std::string(100, 'p') + "\n";
  const auto policy = parse(text);
  ASSERT_TRUE(policy);
  std::size_t bytes = 0;
  for (const auto& line : policy->lines) bytes += line.size();
  EXPECT_LE(bytes, kMaxStsReportedBytes);
  EXPECT_GT(policy->lines.size(), 4u);
  EXPECT_EQ(policy->lines[0], "version: STSv1");
}

TEST(StsPolicy, PatternsMatchAsTheRfcSays) {
  const auto policy =
      parse("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 5\n");
  ASSERT_TRUE(policy);
  EXPECT_TRUE(sts_mx_matches(*policy, "mail.example.com"));
  EXPECT_TRUE(sts_mx_matches(*policy, "MAIL.example.COM"));
  EXPECT_TRUE(sts_mx_matches(*policy, "mx1.example.net"));
  // The wildcard stands for one whole label, and not for none.
  EXPECT_FALSE(sts_mx_matches(*policy, "a.b.example.net"));
  EXPECT_FALSE(sts_mx_matches(*policy, "example.net"));
  EXPECT_FALSE(sts_mx_matches(*policy, "evilexample.net"));
  EXPECT_FALSE(sts_mx_matches(*policy, "mail.example.com.evil"));
  EXPECT_FALSE(sts_mx_matches(*policy, "other.example.com"));
  EXPECT_FALSE(sts_mx_matches(*policy, ""));
}

TEST(StsRecord, TheIdIsRead) {
  EXPECT_EQ(parse_sts_record("v=STSv1; id=20160831085700Z;"), "20160831085700Z");
  EXPECT_EQ(parse_sts_record("v=STSv1;id=abc"), "abc");
  EXPECT_EQ(parse_sts_record("v=STSv1; ext=1; id=abc ;"), "abc");
}

TEST(StsRecord, WhatIsNotARecordIsRefused) {
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"v=STSv2; id=abc", "does not begin v=STSv1"},
      {"v=STSv10; id=abc", "v=STSv1 not followed by ;"},
      {" v=STSv1; id=abc", "does not begin v=STSv1"},
      {"v=STSv1;", "no id"},
      {"v=STSv1", "no id"},
      {"v=STSv1; id=", "a malformed field"},
      {"v=STSv1; id=a-b", "an id that is not 1 to 32 letters and digits"},
      {"v=STSv1; id=123456789012345678901234567890123",
       "an id that is not 1 to 32 letters and digits"},
      {"v=STSv1; id=a; id=b", "two ids"},
      {"v=STSv1; id", "a malformed field"},
  };
  for (const auto& [text, why] : cases) {
    std::string error;
    EXPECT_FALSE(parse_sts_record(text, &error)) << text;
    EXPECT_EQ(error, why) << text;
  }
}

TEST(StsRecord, ExactlyOneStsRecordAmongTheTxtRecords) {
  EXPECT_EQ(sts_record_id({"v=spf1 -all", "v=STSv1; id=x1"}), "x1");
  // "v=STSv10;" is another version's record, not a second STSv1 one (RFC 8461 3.1).
  EXPECT_EQ(sts_record_id({"v=STSv10; id=x0", "v=STSv1; id=x1"}), "x1");
  std::string error;
  EXPECT_FALSE(sts_record_id({"v=STSv1; id=x1", "v=STSv1; id=x2"}, &error));
  EXPECT_EQ(error, "more than one v=STSv1 record");
  EXPECT_FALSE(sts_record_id({"v=spf1 -all"}, &error));
  EXPECT_EQ(error, "no v=STSv1 record");
}

TEST(TxtRecord, StringsAreJoined) {
  EXPECT_EQ(dns::read_txt(std::string("\x07v=STSv1\x07; id=ab", 16)), "v=STSv1; id=ab");
  EXPECT_EQ(dns::read_txt(std::string("\x00", 1)), "");
  EXPECT_FALSE(dns::read_txt(""));
  EXPECT_FALSE(
      dns::read_txt("\x05"
                    "abc"));
}

}  // namespace
}  // namespace stp::outbound
