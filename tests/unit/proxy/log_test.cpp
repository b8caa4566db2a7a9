// Unit tests for the log: BatchingSink (lines whole and in order from several threads; written
// at once while quiet, for a warning, at the size bound, after the interval, at flush and at
// stop), the line formats, and the escaping functions.
#include "proxy/log.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace stp::log {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using Clock = std::chrono::steady_clock;

// A long interval: nothing is written by the flusher while a test runs.
constexpr auto kNever = std::chrono::hours(1);

// Polls `done` until it holds or a minute has passed (generous: a loaded machine, a sanitizer).
template <typename Done>
bool eventually(Done done) {
  const auto give_up = Clock::now() + std::chrono::minutes(1);
  while (!done()) {
    if (Clock::now() >= give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// What the sink wrote: each write(2) it would have made, and when.
class Output {
 public:
  BatchingSink::Writer writer() {
    return [this](std::string_view lines) {
      std::lock_guard lock(mutex_);
      writes_.emplace_back(lines);
      times_.push_back(Clock::now());
    };
  }
  std::vector<std::string> writes() {
    std::lock_guard lock(mutex_);
    return writes_;
  }
  Clock::time_point first_write_time() {
    std::lock_guard lock(mutex_);
    return times_.at(0);
  }
  // Every line written, in order.
  std::vector<std::string> lines() {
    std::vector<std::string> out;
    for (const std::string& write : writes()) {
      std::size_t start = 0;
      for (std::size_t end; (end = write.find('\n', start)) != std::string::npos; start = end + 1) {
        out.push_back(write.substr(start, end - start));
      }
      EXPECT_EQ(start, write.size()) << "a write that does not end a line: " << write;
    }
    return out;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> writes_;
  std::vector<Clock::time_point> times_;
};

// A logger on a BatchingSink that writes bare messages (the pattern is tested on its own).
struct Fixture {
  explicit Fixture(BatchingSink::Options options)
      : sink(std::make_shared<BatchingSink>(options, output.writer())), logger("test", sink) {
    logger.set_pattern("%v");
    logger.set_level(spdlog::level::trace);
  }
  Output output;
  std::shared_ptr<BatchingSink> sink;
  spdlog::logger logger;
};

BatchingSink::Options always_held(std::size_t capacity = 64 * 1024,
                                  std::chrono::milliseconds interval = kNever) {
  return {.capacity = capacity, .interval = interval, .quiet_window = kNever, .quiet_lines = 0};
}

TEST(EscapeCommand, ShowsAnAuthLinesMechanismOnly) {
  EXPECT_EQ(log::escape_command("AUTH PLAIN AGFsaWNlAHNlY3JldA==\t"), "AUTH PLAIN [credentials]");
  EXPECT_EQ(log::escape_command(" auth\tlogin  c2VjcmV0"), " auth\\x09login [credentials]");
  EXPECT_EQ(log::escape_command("AUTH PLAIN\x01AGFsaWNl"), "AUTH PLAIN [credentials]");
  EXPECT_EQ(log::escape_command("AUTH LOGIN"), "AUTH LOGIN");
  EXPECT_EQ(log::escape_command("MAIL FROM:<a@b>\t"), "MAIL FROM:<a@b>\\x09");
  EXPECT_EQ(log::escape_command("AUTHX secret"), "AUTHX secret");
}

TEST(BatchingSink, HoldsLinesUntilFlushAndWritesThemInOneWrite) {
  Fixture f(always_held());
  f.logger.info("one");
  f.logger.debug("two");
  f.logger.info("three");
  EXPECT_TRUE(f.output.writes().empty());
  f.logger.flush();
  EXPECT_THAT(f.output.writes(), ElementsAre("one\ntwo\nthree\n"));
  f.logger.flush();  // nothing held: no empty write
  EXPECT_EQ(f.output.writes().size(), 1u);
}

TEST(BatchingSink, WritesAtOnceWhileQuiet) {
  Fixture f({.capacity = 64 * 1024, .interval = kNever, .quiet_window = kNever, .quiet_lines = 2});
  f.logger.info("one");
  f.logger.info("two");
  EXPECT_THAT(f.output.writes(), ElementsAre("one\n", "two\n"));
  f.logger.info("three");  // the third line in one window: held from now on
  f.logger.info("four");
  EXPECT_EQ(f.output.writes().size(), 2u);
  f.sink->flush();
  EXPECT_THAT(f.output.writes(), ElementsAre("one\n", "two\n", "three\nfour\n"));
}

TEST(BatchingSink, StaysBusyForTheWindowAfterABusyOne) {
  constexpr auto kWindow = 1s;
  Fixture f({.capacity = 64 * 1024, .interval = kNever, .quiet_window = kWindow, .quiet_lines = 1});
  const auto start = Clock::now();
  f.logger.info("one");
  f.logger.info("two");  // held
  // The next window: the one before it was busy, so the line is still held.
  std::this_thread::sleep_for(kWindow + 50ms);
  f.logger.info("three");
  if (Clock::now() - start >= 2 * kWindow) GTEST_SKIP() << "slept past the next window";
  EXPECT_THAT(f.output.writes(), ElementsAre("one\n"));
}

TEST(BatchingSink, QuietAgainOnceAWholeWindowWasQuiet) {
  Fixture f({.capacity = 64 * 1024, .interval = 50ms, .quiet_window = 50ms, .quiet_lines = 1});
  f.logger.info("one");
  f.logger.info("two");  // held: the rate is past one line per window
  // Two windows later neither window has more than one line: written at once, after what the
  // flusher may or may not have written by then.
  std::this_thread::sleep_for(110ms);
  f.logger.info("three");
  EXPECT_THAT(f.output.lines(), ElementsAre("one", "two", "three"));
}

// Past the quiet rate, lines are held and the flusher writes them, all and in order, without a
// flush.
TEST(BatchingSink, BurstPastTheQuietRateArrivesAfterTheInterval) {
  Fixture f({.capacity = 64 * 1024, .interval = 20ms, .quiet_window = kNever, .quiet_lines = 3});
  for (int i = 0; i < 3; ++i) f.logger.info("quiet {}", i);
  EXPECT_THAT(f.output.writes(), ElementsAre("quiet 0\n", "quiet 1\n", "quiet 2\n"));
  for (int i = 0; i < 10; ++i) f.logger.info("burst {}", i);
  ASSERT_TRUE(eventually([&] { return f.output.lines().size() == 13; }));
  const auto lines = f.output.lines();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(lines[3 + i], fmt::format("burst {}", i));
}

TEST(BatchingSink, WritesAWarningAtOnceAfterWhatItHolds) {
  Fixture f(always_held());
  f.logger.info("held");
  f.logger.warn("warning");
  f.logger.info("held again");
  f.logger.error("error");
  f.logger.critical("critical");
  EXPECT_THAT(f.output.writes(),
              ElementsAre("held\nwarning\n", "held again\nerror\n", "critical\n"));
}

TEST(BatchingSink, WritesWhenTheBufferReachesItsCapacity) {
  Fixture f(always_held(/*capacity=*/100));
  const std::string line(39, 'x');  // 40 bytes with its newline
  f.logger.info(line);
  f.logger.info(line);
  EXPECT_TRUE(f.output.writes().empty());
  f.logger.info(line);  // 120 bytes: written, the line that crossed the bound with them
  EXPECT_THAT(f.output.writes(), ElementsAre(line + "\n" + line + "\n" + line + "\n"));
  f.logger.info(line);
  EXPECT_EQ(f.output.writes().size(), 1u);
}

TEST(BatchingSink, FlusherWritesHeldLinesOneIntervalAfterTheFirst) {
  constexpr auto kInterval = 30ms;
  Fixture f(always_held(64 * 1024, kInterval));
  const auto logged = Clock::now();
  f.logger.info("first");
  f.logger.info("second");
  ASSERT_TRUE(eventually([&] { return !f.output.writes().empty(); }));
  EXPECT_GE(f.output.first_write_time() - logged, kInterval);
  // And again for the next batch: the flusher waits for lines, not only once.
  f.logger.info("third");
  ASSERT_TRUE(eventually([&] { return f.output.lines().size() == 3; }));
  EXPECT_THAT(f.output.lines(), ElementsAre("first", "second", "third"));
}

TEST(BatchingSink, StopWritesWhatIsHeldAndThenEveryLineAtOnce) {
  Fixture f(always_held());
  f.logger.info("held");
  f.sink->stop();
  EXPECT_THAT(f.output.writes(), ElementsAre("held\n"));
  f.logger.info("after");
  EXPECT_THAT(f.output.writes(), ElementsAre("held\n", "after\n"));
  f.sink->stop();  // twice is harmless
}

TEST(BatchingSink, DestructionWritesWhatIsHeld) {
  Output output;
  {
    auto sink = std::make_shared<BatchingSink>(always_held(), output.writer());
    spdlog::logger logger("test", sink);
    logger.set_pattern("%v");
    logger.info("held");
    logger.info("and this");
  }
  EXPECT_THAT(output.writes(), ElementsAre("held\nand this\n"));
}

TEST(BatchingSink, TryFlushWritesWhatIsHeld) {
  Fixture f(always_held());
  f.logger.info("held");
  f.sink->try_flush(100ms);
  EXPECT_THAT(f.output.writes(), ElementsAre("held\n"));
}

// For std::terminate: a thread stuck writing to a stderr that does not drain holds the sink's
// lock; try_flush gives up instead of waiting with it.
TEST(BatchingSink, TryFlushGivesUpWhileAnotherThreadIsStuckWriting) {
  std::promise<void> writing;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> writes = 0;
  auto sink = std::make_shared<BatchingSink>(always_held(), [&](std::string_view) {
    if (writes++ == 0) {
      writing.set_value();
      released.wait();
    }
  });
  spdlog::logger logger("test", sink);
  std::thread stuck([&] { logger.warn("stuck"); });
  writing.get_future().wait();
  const auto start = Clock::now();
  sink->try_flush(20ms);
  EXPECT_GE(Clock::now() - start, 20ms);
  EXPECT_EQ(writes, 1);
  release.set_value();
  stuck.join();
}

// Three threads logging through a small buffer with the flusher running: every line whole,
// each thread's lines in its order, none lost or repeated.
TEST(BatchingSink, LinesFromSeveralThreadsComeOutWholeAndInOrder) {
  constexpr int kThreads = 3;
  constexpr int kLines = 2000;
  Fixture f(always_held(/*capacity=*/1024, /*interval=*/1ms));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&f, t] {
      for (int i = 0; i < kLines; ++i) {
        if (i % 500 == 499) {
          f.logger.warn("thread {} line {} {}", t, i, std::string(i % 90, 'w'));
        } else {
          f.logger.info("thread {} line {} {}", t, i, std::string(i % 70, 'i'));
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  f.sink->stop();
  int next[kThreads] = {};
  const auto lines = f.output.lines();
  for (const std::string& line : lines) {
    int t = -1, i = -1;
    ASSERT_EQ(std::sscanf(line.c_str(), "thread %d line %d ", &t, &i), 2) << line;
    ASSERT_TRUE(t >= 0 && t < kThreads) << line;
    ASSERT_EQ(i, next[t]) << line;
    const char fill = i % 500 == 499 ? 'w' : 'i';
    EXPECT_EQ(line, fmt::format("thread {} line {} {}", t, i,
                                std::string(i % (fill == 'w' ? 90 : 70), fill)));
    ++next[t];
  }
  EXPECT_EQ(lines.size(), std::size_t{kThreads * kLines});
}

spdlog::details::log_msg message(spdlog::level::level_enum level, std::string_view text) {
  spdlog::details::log_msg msg("test", level, spdlog::string_view_t(text.data(), text.size()));
  msg.time = std::chrono::system_clock::time_point(std::chrono::milliseconds(1796638500123));
  return msg;
}

std::string formatted(bool json, const spdlog::details::log_msg& msg) {
  spdlog::memory_buf_t out;
  make_formatter(json)->format(msg, out);
  return std::string(out.data(), out.size());
}

// A local time zone nine hours off UTC for the life of the object, so that a formatter on
// local time would show.
class ForeignTimeZone {
 public:
  ForeignTimeZone() {
    if (const char* tz = std::getenv("TZ")) saved_ = tz;
    setenv("TZ", "XST-9", 1);
    tzset();
  }
  ~ForeignTimeZone() {
    if (saved_) {
      setenv("TZ", saved_->c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }

 private:
  std::optional<std::string> saved_;
};

TEST(LogFormat, TextLineIsUtcTimeLevelAndMessage) {
  const ForeignTimeZone zone;
  EXPECT_EQ(formatted(false, message(spdlog::level::info, "session client=[::1]:25")),
            "2026-12-07T10:15:00.123Z info session client=[::1]:25\n");
  EXPECT_EQ(formatted(false, message(spdlog::level::warn, "w")),
            "2026-12-07T10:15:00.123Z warning w\n");
}

TEST(LogFormat, JsonLineEscapesTheMessage) {
  const ForeignTimeZone zone;
  EXPECT_EQ(formatted(true, message(spdlog::level::err, "a \"b\" \\ \x01\n\x1f end")),
            R"({"time":"2026-12-07T10:15:00.123Z","level":"error","message":"a \"b\" \\ )"
            R"(\u0001\u000a\u001f end"})"
            "\n");
}

TEST(LogEscape, JsonEscapeKeepsUtf8AndEscapesControls) {
  EXPECT_EQ(json_escape("plain é"), "plain é");
  EXPECT_EQ(json_escape("q\"b\\\t"), "q\\\"b\\\\\\u0009");
}

TEST(LogEscape, EscapeTruncatesAndHexesWhatIsNotPrintable) {
  EXPECT_EQ(escape("ok \"q\" \\ \x7f\xc3\xa9"), "ok \\\"q\\\" \\\\ \\x7f\\xc3\\xa9");
  EXPECT_EQ(escape("abcdef", 3), "abc...");
}

}  // namespace
}  // namespace stp::log
