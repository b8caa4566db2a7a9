// DeadlineQueue and Deadline on one io_context: a deadline tells its owner when it passes and
// then reads as expired until armed again; a wake point before it tells the owner without
// ending the wait; cancel, clear and destruction take a deadline out; many deadlines fire in
// the order of their moments, whatever the order they were armed in; owners may arm, move or
// destroy deadlines from their calls. Durations are short and waits generous: nothing here
// asserts that something happened quickly, only that it happened, in order, and not early.
#include "proxy/deadline.hpp"

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <vector>

namespace stp {
namespace {

using namespace std::chrono_literals;
using Clock = Deadline::Clock;

// Counts what it is told, and may act on it.
class Recorder final : public Deadline::Owner {
 public:
  void on_deadline_expired() override {
    ++expired;
    expired_at = Clock::now();
    if (on_expired) on_expired();
  }
  void on_wake_point() override {
    ++woke;
    if (on_woke) on_woke();
  }

  int expired = 0;
  int woke = 0;
  Clock::time_point expired_at{};
  std::function<void()> on_expired;
  std::function<void()> on_woke;
};

class DeadlineTest : public ::testing::Test {
 protected:
  DeadlineTest() { queue.start(io.get_executor()); }
  ~DeadlineTest() override { queue.stop(); }

  // Runs the loop until `done` or 10 s; false when it timed out.
  bool run_until(const std::function<bool()>& done) {
    const auto give_up = Clock::now() + 10s;
    while (!done() && Clock::now() < give_up) {
      io.restart();
      io.run_for(10ms);
    }
    return done();
  }
  // Runs the loop for `d`, whatever happens.
  void run_for(Clock::duration d) {
    io.restart();
    io.run_for(d);
  }

  boost::asio::io_context io;
  DeadlineQueue queue;
};

TEST_F(DeadlineTest, AnArmedDeadlineExpiresAndTellsItsOwnerOnce) {
  Recorder owner;
  Deadline deadline(queue, owner);
  EXPECT_EQ(deadline.fired(), Deadline::Fired::no);
  const auto armed_at = Clock::now();
  deadline.arm(50ms);
  EXPECT_EQ(queue.size(), 1u);
  ASSERT_TRUE(run_until([&] { return owner.expired > 0; }));
  EXPECT_GE(owner.expired_at - armed_at, 50ms);  // never early
  EXPECT_TRUE(deadline.expired());
  EXPECT_EQ(deadline.fired(), Deadline::Fired::expired);
  EXPECT_EQ(queue.size(), 0u);
  run_for(100ms);
  EXPECT_EQ(owner.expired, 1);
  EXPECT_EQ(owner.woke, 0);
}

TEST_F(DeadlineTest, ArmingAgainForgetsWhyTheLastWaitEnded) {
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.arm(10ms);
  ASSERT_TRUE(run_until([&] { return deadline.expired(); }));
  deadline.arm(1h);
  EXPECT_FALSE(deadline.expired());
  EXPECT_EQ(deadline.fired(), Deadline::Fired::no);
  EXPECT_EQ(queue.size(), 1u);
}

TEST_F(DeadlineTest, ArmAtTakesAMoment) {
  Recorder owner;
  Deadline deadline(queue, owner);
  const auto when = Clock::now() + 30ms;
  deadline.arm_at(when);
  EXPECT_EQ(deadline.at(), when);
  ASSERT_TRUE(run_until([&] { return deadline.expired(); }));
  EXPECT_GE(owner.expired_at, when);
}

TEST_F(DeadlineTest, AMomentAlreadyPastFiresAtOnce) {
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.arm_at(Clock::now() - 1s);
  EXPECT_TRUE(run_until([&] { return deadline.expired(); }));
}

TEST_F(DeadlineTest, AWakePointBeforeTheDeadlineWakesWithoutEndingIt) {
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.arm(1h);
  const auto until = deadline.at();
  deadline.wake_at(Clock::now() + 20ms);
  ASSERT_TRUE(run_until([&] { return owner.woke > 0; }));
  EXPECT_EQ(deadline.fired(), Deadline::Fired::wake_point);
  EXPECT_FALSE(deadline.expired());
  EXPECT_EQ(deadline.at(), until);
  EXPECT_EQ(queue.size(), 1u);  // the deadline still stands
  EXPECT_TRUE(deadline.take_wake_point());
  EXPECT_EQ(deadline.fired(), Deadline::Fired::no);
  EXPECT_FALSE(deadline.take_wake_point());
  run_for(100ms);
  EXPECT_EQ(owner.woke, 1);  // a wake point fires once
  EXPECT_EQ(owner.expired, 0);
}

TEST_F(DeadlineTest, AWakePointAfterTheDeadlineNeverFires) {
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.arm(20ms);
  deadline.wake_at(Clock::now() + 200ms);
  ASSERT_TRUE(run_until([&] { return deadline.expired(); }));
  run_for(400ms);
  EXPECT_EQ(owner.woke, 0);
  EXPECT_EQ(owner.expired, 1);
  EXPECT_EQ(queue.size(), 0u);
}

TEST_F(DeadlineTest, AWakePointAloneWakesTheOwner) {
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.wake_at(Clock::now() + 20ms);
  ASSERT_TRUE(run_until([&] { return owner.woke > 0; }));
  EXPECT_FALSE(deadline.expired());
  EXPECT_EQ(queue.size(), 0u);  // no deadline behind it
}

TEST_F(DeadlineTest, AClearedWakePointDoesNotFire) {
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.arm(1h);
  deadline.wake_at(Clock::now() + 20ms);
  deadline.clear_wake_point();
  run_for(300ms);
  EXPECT_EQ(owner.woke, 0);
  EXPECT_EQ(queue.size(), 1u);
}

TEST_F(DeadlineTest, CancelTakesBothOut) {
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.arm(20ms);
  deadline.wake_at(Clock::now() + 10ms);
  deadline.cancel();
  EXPECT_EQ(queue.size(), 0u);
  EXPECT_EQ(deadline.at(), Clock::time_point::max());
  run_for(300ms);
  EXPECT_EQ(owner.expired, 0);
  EXPECT_EQ(owner.woke, 0);
  deadline.arm(10ms);  // usable again
  EXPECT_TRUE(run_until([&] { return deadline.expired(); }));
}

TEST_F(DeadlineTest, ADestroyedDeadlineLeavesTheQueue) {
  Recorder owner;
  Recorder other_owner;
  Deadline other(queue, other_owner);
  other.arm(1h);
  {
    Deadline deadline(queue, owner);
    deadline.arm(20ms);
    EXPECT_EQ(queue.size(), 2u);
  }
  EXPECT_EQ(queue.size(), 1u);
  run_for(300ms);
  EXPECT_EQ(owner.expired, 0);
  EXPECT_EQ(queue.size(), 1u);
}

TEST_F(DeadlineTest, MovingADeadlineEarlierOrLaterIsHonoured) {
  Recorder sooner_owner;
  Recorder later_owner;
  Deadline sooner(queue, sooner_owner);
  Deadline later(queue, later_owner);
  sooner.arm(1h);
  later.arm(20ms);
  sooner.arm(20ms);  // earlier than the timer was set for
  later.arm(1h);     // later than it was
  ASSERT_TRUE(run_until([&] { return sooner.expired(); }));
  run_for(200ms);
  EXPECT_EQ(later_owner.expired, 0);
  EXPECT_EQ(queue.size(), 1u);
}

TEST_F(DeadlineTest, ManyDeadlinesFireInTheOrderOfTheirMoments) {
  constexpr int kCount = 64;
  std::vector<int> order;
  std::vector<std::unique_ptr<Recorder>> owners;
  std::vector<std::unique_ptr<Deadline>> deadlines;
  std::vector<int> arm_order(kCount);
  for (int i = 0; i < kCount; ++i) arm_order[i] = i;
  std::shuffle(arm_order.begin(), arm_order.end(), std::mt19937(20261207));
  const auto base = Clock::now() + 20ms;
  for (int i = 0; i < kCount; ++i) {
    owners.push_back(std::make_unique<Recorder>());
    owners.back()->on_expired = [&order, i] { order.push_back(i); };
    deadlines.push_back(std::make_unique<Deadline>(queue, *owners.back()));
  }
  for (const int i : arm_order) deadlines[i]->arm_at(base + i * 1ms);
  EXPECT_EQ(queue.size(), static_cast<std::size_t>(kCount));
  ASSERT_TRUE(run_until([&] { return order.size() == kCount; }));
  for (int i = 0; i < kCount; ++i) EXPECT_EQ(order[i], i);
  EXPECT_EQ(queue.size(), 0u);
}

TEST_F(DeadlineTest, DeadlinesAddedAndRemovedInAnyOrderKeepTheirOrder) {
  constexpr int kCount = 40;
  std::vector<int> order;
  std::vector<std::unique_ptr<Recorder>> owners;
  std::vector<std::unique_ptr<Deadline>> deadlines;
  const auto base = Clock::now() + 30ms;
  std::mt19937 random(7);
  for (int i = 0; i < kCount; ++i) {
    owners.push_back(std::make_unique<Recorder>());
    owners.back()->on_expired = [&order, i] { order.push_back(i); };
    deadlines.push_back(std::make_unique<Deadline>(queue, *owners.back()));
    deadlines.back()->arm_at(base + std::chrono::milliseconds(random() % 1000));
  }
  // Every third one out, every other one moved to its own place in order.
  std::vector<int> kept;
  for (int i = 0; i < kCount; ++i) {
    if (i % 3 == 0) {
      deadlines[i].reset();
    } else {
      deadlines[i]->arm_at(base + i * 1ms);
      kept.push_back(i);
    }
  }
  EXPECT_EQ(queue.size(), kept.size());
  ASSERT_TRUE(run_until([&] { return order.size() == kept.size(); }));
  EXPECT_EQ(order, kept);
}

TEST_F(DeadlineTest, AnOwnerMayArmItsDeadlineAgainFromItsCall) {
  Recorder owner;
  Deadline deadline(queue, owner);
  owner.on_expired = [&] {
    if (owner.expired < 3) deadline.arm(10ms);
  };
  deadline.arm(10ms);
  ASSERT_TRUE(run_until([&] { return owner.expired == 3; }));
  EXPECT_TRUE(deadline.expired());
  EXPECT_EQ(queue.size(), 0u);
}

TEST_F(DeadlineTest, AnOwnerMayDestroyAnotherDeadlineDueAtTheSameTime) {
  Recorder first_owner;
  Recorder second_owner;
  Deadline first(queue, first_owner);
  auto second = std::make_unique<Deadline>(queue, second_owner);
  first_owner.on_expired = [&] { second.reset(); };
  const auto when = Clock::now() + 20ms;
  first.arm_at(when);
  second->arm_at(when + 1ns);
  ASSERT_TRUE(run_until([&] { return first.expired(); }));
  run_for(100ms);
  EXPECT_EQ(second_owner.expired, 0);
  EXPECT_EQ(queue.size(), 0u);
}

TEST_F(DeadlineTest, AWakePointCallMayArmTheDeadlineAnew) {
  Recorder owner;
  Deadline deadline(queue, owner);
  owner.on_woke = [&] { deadline.arm(10ms); };  // as an owner giving a resource back might
  deadline.arm(1h);
  deadline.wake_at(Clock::now() + 10ms);
  ASSERT_TRUE(run_until([&] { return owner.expired > 0; }));
  EXPECT_EQ(owner.woke, 1);
}

TEST(DeadlineQueueTest, BeforeStartAndAfterStopNothingFires) {
  boost::asio::io_context io;
  DeadlineQueue queue;
  Recorder owner;
  Deadline deadline(queue, owner);
  deadline.arm(10ms);
  EXPECT_EQ(queue.size(), 1u);  // kept in order, not fired
  io.run_for(100ms);
  EXPECT_EQ(owner.expired, 0);

  queue.start(io.get_executor());
  const auto give_up = Clock::now() + 10s;
  while (owner.expired == 0 && Clock::now() < give_up) {
    io.restart();
    io.run_for(10ms);
  }
  EXPECT_EQ(owner.expired, 1);

  deadline.arm(10ms);
  queue.stop();
  io.restart();
  io.run_for(200ms);
  EXPECT_EQ(owner.expired, 1);
  EXPECT_EQ(queue.size(), 1u);
}

TEST(DeadlineQueueTest, TwoQueuesOnOneContextAreIndependent) {
  boost::asio::io_context io;
  DeadlineQueue a;
  DeadlineQueue b;
  a.start(io.get_executor());
  b.start(io.get_executor());
  Recorder owner_a;
  Recorder owner_b;
  Deadline in_a(a, owner_a);
  Deadline in_b(b, owner_b);
  in_a.arm(10ms);
  in_b.arm(1h);
  const auto give_up = Clock::now() + 10s;
  while (owner_a.expired == 0 && Clock::now() < give_up) {
    io.restart();
    io.run_for(10ms);
  }
  EXPECT_EQ(owner_a.expired, 1);
  EXPECT_EQ(owner_b.expired, 0);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.size(), 1u);
  a.stop();
  b.stop();
}

}  // namespace
}  // namespace stp
