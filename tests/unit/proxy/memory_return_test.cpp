// Unit tests for MemoryReturn: freed memory is returned only once every session of the worker
// has slept for a moment, at most once per interval, and never after stop().
#include "proxy/memory_return.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <optional>
#include <vector>

namespace stp {
namespace {

using namespace std::chrono_literals;

class MemoryReturnTest : public ::testing::Test {
 protected:
  MemoryReturnTest()
      : memory([this] { release_times.push_back(std::chrono::steady_clock::now()); }) {
    memory.start(io.get_executor());
  }
  int releases() const { return static_cast<int>(release_times.size()); }

  // Runs the worker's loop for `d` (long enough for a timer of kQuietFor to fire even on a
  // loaded machine; nothing here asserts that something happened quickly).
  void run_for(std::chrono::steady_clock::duration d) {
    io.restart();
    io.run_for(d);
  }

  boost::asio::io_context io;
  std::vector<std::chrono::steady_clock::time_point> release_times;
  MemoryReturn memory;
};

TEST_F(MemoryReturnTest, ReturnsOnceWhenTheLastSessionSleeps) {
  {
    AwakeSession a(memory);
    AwakeSession b(memory);
    EXPECT_EQ(memory.awake(), 2u);
  }
  EXPECT_EQ(memory.awake(), 0u);
  run_for(MemoryReturn::kQuietFor + 500ms);
  EXPECT_EQ(releases(), 1);
  run_for(MemoryReturn::kQuietFor + 200ms);
  EXPECT_EQ(releases(), 1);  // nothing woke since: nothing new to return
}

TEST_F(MemoryReturnTest, NothingWhileASessionIsAwake) {
  AwakeSession held(memory);
  { AwakeSession brief(memory); }
  run_for(MemoryReturn::kQuietFor + 500ms);
  EXPECT_EQ(releases(), 0);
}

TEST_F(MemoryReturnTest, ASessionThatWakesBeforeTheMomentPassesPutsItOff) {
  std::optional<AwakeSession> first(std::in_place, memory);
  first.reset();  // quiet: a look is scheduled
  AwakeSession again(memory);
  run_for(MemoryReturn::kQuietFor + 500ms);
  EXPECT_EQ(releases(), 0);  // the look found a session awake
}

TEST_F(MemoryReturnTest, AtMostOncePerIntervalAndTheLaterOneIsNotLost) {
  { AwakeSession a(memory); }
  run_for(MemoryReturn::kQuietFor + 500ms);
  ASSERT_EQ(releases(), 1);
  { AwakeSession b(memory); }
  // Deferred to a second after the first, not dropped.
  const auto waited_from = std::chrono::steady_clock::now();
  while (releases() < 2 && std::chrono::steady_clock::now() - waited_from < 10s) {
    run_for(100ms);
  }
  EXPECT_EQ(releases(), 2);
  ASSERT_EQ(releases(), 2);
  // A timer never fires early; the slack covers the clock read just before the first release.
  EXPECT_GE(release_times[1] - release_times[0], MemoryReturn::kMinInterval - 50ms);
}

TEST_F(MemoryReturnTest, StopDropsTheScheduledReturn) {
  { AwakeSession a(memory); }
  memory.stop();
  run_for(MemoryReturn::kQuietFor + 500ms);
  EXPECT_EQ(releases(), 0);
}

TEST_F(MemoryReturnTest, TrimHeapsIsSafeToCall) {
  MemoryReturn::trim_heaps();  // glibc: malloc_trim(0); elsewhere nothing
}

}  // namespace
}  // namespace stp
