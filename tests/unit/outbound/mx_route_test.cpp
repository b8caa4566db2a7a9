// The order MX hosts are tried in: by preference, ties in random order (every order of a tie
// turns up), at most the limit.
#include "outbound/mx_route.hpp"

#include <gtest/gtest.h>

#include <set>

namespace stp::outbound {
namespace {

TEST(MxRoute, HostsGoByPreferenceWithTiesShuffled) {
  const std::vector<dns::MxRecord> records = {
      {20, "b1"}, {10, "a"}, {20, "b2"}, {30, "c"}, {20, "b3"}};
  std::mt19937 random(42);
  std::set<std::string> firsts_of_the_tie;
  for (int i = 0; i < 200; ++i) {
    const auto ordered = order_mx(records, random, 10);
    ASSERT_EQ(ordered.size(), 5u);
    EXPECT_EQ(ordered[0].exchange, "a");
    EXPECT_EQ(ordered[4].exchange, "c");
    for (std::size_t j = 1; j < 4; ++j) EXPECT_EQ(ordered[j].preference, 20);
    firsts_of_the_tie.insert(ordered[1].exchange);
  }
  EXPECT_EQ(firsts_of_the_tie, (std::set<std::string>{"b1", "b2", "b3"}));
}

TEST(MxRoute, AtMostTheLimitAreTried) {
  std::vector<dns::MxRecord> records;
  for (int i = 0; i < 50; ++i) records.push_back({static_cast<std::uint16_t>(50 - i), "mx"});
  std::mt19937 random(1);
  const auto ordered = order_mx(records, random, 10);
  ASSERT_EQ(ordered.size(), 10u);
  EXPECT_EQ(ordered.front().preference, 1);
  EXPECT_EQ(ordered.back().preference, 10);
}

}  // namespace
}  // namespace stp::outbound
