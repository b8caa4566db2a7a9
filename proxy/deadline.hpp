// One timer for everything a connection waits on, re-armed lazily: arming only moves the
// deadline, and a timer that fires early sleeps again until it. At the deadline the owner is
// told to cancel what waits; the waiter then reads fired() to learn why its wait ended, and
// the next arm() forgets it, so no waiter has to reset a flag by hand.
//
// A wake point (wake_at) is a second, earlier moment that does not end the wait but lets the
// owner act (give an idle MTA connection back, say). Used on one thread only.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <memory>

namespace stp {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  // Why the last wait was cut short, if it was.
  enum class Fired : std::uint8_t { no, expired, wake_point };

  class Owner {
   public:
    // The deadline passed: cancel every operation that waits (their waiters see expired).
    virtual void on_deadline_expired() = 0;
    // A wake point passed before the deadline.
    virtual void on_wake_point() {}
    // Held by the pending timer, so that the owner outlives its handler.
    virtual std::shared_ptr<void> keep_alive() = 0;

   protected:
    ~Owner() = default;
  };

  Deadline(const boost::asio::any_io_executor& executor, Owner& owner)
      : timer_(executor), owner_(owner) {}

  // The next wait ends at the latest `timeout` from now (or at `when`).
  void arm(Clock::duration timeout) { arm_at(Clock::now() + timeout); }
  void arm_at(Clock::time_point when);
  // Calls on_wake_point() at `when` (if before the deadline), until wake_at() or arm moves it.
  void wake_at(Clock::time_point when);
  void clear_wake_point() { wake_point_ = Clock::time_point::max(); }

  Clock::time_point at() const { return deadline_; }
  Fired fired() const { return fired_; }
  bool expired() const { return fired_ == Fired::expired; }
  // The wait ended for the wake point: forget it (the owner handled it).
  bool take_wake_point() {
    const bool woke = fired_ == Fired::wake_point;
    if (woke) fired_ = Fired::no;
    return woke;
  }

  void cancel() { timer_.cancel(); }

 private:
  void start();
  void on_timer();

  boost::asio::steady_timer timer_;
  Owner& owner_;
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point wake_point_ = Clock::time_point::max();
  bool pending_ = false;
  Fired fired_ = Fired::no;
};

}  // namespace stp
