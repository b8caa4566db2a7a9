// Deadlines for everything a connection waits on, kept per worker thread in one queue with
// one timer: arming a Deadline moves its place in the queue (no timer operation per
// connection, so a parked connection costs no pending timer). At the deadline the owner is
// told to cancel what waits; the waiter then reads fired() to learn why its wait ended, and
// the next arm() forgets it, so no waiter has to reset a flag by hand.
//
// A wake point (wake_at) is a second, earlier moment that does not end the wait but lets the
// owner act (give an idle MTA connection back, say). Owners are called from the queue's timer
// on the worker's thread; a Deadline leaves the queue when destroyed, so its owner needs no
// keep-alive. Everything here runs on one thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

namespace stp {

class Deadline;

// The deadlines of one worker thread, earliest first (a binary heap).
class DeadlineQueue {
 public:
  using Clock = std::chrono::steady_clock;

  DeadlineQueue() = default;
  DeadlineQueue(const DeadlineQueue&) = delete;
  DeadlineQueue& operator=(const DeadlineQueue&) = delete;

  // The queue fires through a timer on `executor`; until then (and after stop()) it only
  // keeps order.
  void start(const boost::asio::any_io_executor& executor);
  // Drops the timer (before its io_context goes); deadlines may still leave the queue.
  void stop();
  std::size_t size() const { return heap_.size(); }

 private:
  friend class Deadline;
  static constexpr std::size_t kNotQueued = static_cast<std::size_t>(-1);

  void place(Deadline& deadline);  // inserts, moves or removes it by its next moment
  void remove(Deadline& deadline);
  void sift_up(std::size_t i);
  void sift_down(std::size_t i);
  void swap_entries(std::size_t a, std::size_t b);
  void rearm();
  void on_timer();

  std::vector<Deadline*> heap_;
  std::unique_ptr<boost::asio::steady_timer> timer_;
  Clock::time_point armed_for_ = Clock::time_point::max();
};

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

   protected:
    ~Owner() = default;
  };

  Deadline(DeadlineQueue& queue, Owner& owner) : queue_(queue), owner_(owner) {}
  ~Deadline() { queue_.remove(*this); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  // The next wait ends at the latest `timeout` from now (or at `when`).
  void arm(Clock::duration timeout) { arm_at(Clock::now() + timeout); }
  void arm_at(Clock::time_point when);
  // Calls on_wake_point() at `when` (if before the deadline), until moved or cleared.
  void wake_at(Clock::time_point when);
  void clear_wake_point();
  // Neither deadline nor wake point: nothing fires until armed again.
  void cancel();

  Clock::time_point at() const { return deadline_; }
  Fired fired() const { return fired_; }
  bool expired() const { return fired_ == Fired::expired; }
  // The wait ended for the wake point: forget it (the owner handled it).
  bool take_wake_point() {
    const bool woke = fired_ == Fired::wake_point;
    if (woke) fired_ = Fired::no;
    return woke;
  }

 private:
  friend class DeadlineQueue;
  Clock::time_point next() const { return std::min(deadline_, wake_point_); }
  // Called by the queue once next() has passed; the deadline is out of the queue.
  void fire(Clock::time_point now);

  DeadlineQueue& queue_;
  Owner& owner_;
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point wake_point_ = Clock::time_point::max();
  std::size_t heap_index_ = DeadlineQueue::kNotQueued;
  Fired fired_ = Fired::no;
};

}  // namespace stp
