// Per-thread deadline queue; see deadline.hpp.
#include "proxy/deadline.hpp"

namespace stp {

void DeadlineQueue::start(const boost::asio::any_io_executor& executor) {
  timer_ = std::make_unique<boost::asio::steady_timer>(executor);
  armed_for_ = Clock::time_point::max();
  rearm();
}

void DeadlineQueue::stop() {
  timer_.reset();  // its pending wait completes as cancelled, touching nothing
}

void DeadlineQueue::place(Deadline& deadline) {
  const auto next = deadline.next();
  auto& i = deadline.heap_index_;
  if (next == Clock::time_point::max()) {
    remove(deadline);
    return;
  }
  if (i == kNotQueued) {
    i = heap_.size();
    heap_.push_back(&deadline);
  }
  sift_up(i);
  sift_down(i);
  if (heap_.front()->next() < armed_for_) rearm();
}

void DeadlineQueue::remove(Deadline& deadline) {
  const auto i = deadline.heap_index_;
  if (i == kNotQueued) return;
  const auto last = heap_.size() - 1;
  if (i != last) swap_entries(i, last);
  heap_.pop_back();
  deadline.heap_index_ = kNotQueued;
  if (i < heap_.size()) {
    sift_up(i);
    sift_down(i);
  }
  // An emptier queue needs no earlier timer: it wakes once more and finds nothing due.
}

void DeadlineQueue::sift_up(std::size_t i) {
  while (i > 0) {
    const auto parent = (i - 1) / 2;
    if (heap_[parent]->next() <= heap_[i]->next()) return;
    swap_entries(i, parent);
    i = parent;
  }
}

void DeadlineQueue::sift_down(std::size_t i) {
  while (true) {
    auto smallest = i;
    for (const auto child : {2 * i + 1, 2 * i + 2}) {
      if (child < heap_.size() && heap_[child]->next() < heap_[smallest]->next()) {
        smallest = child;
      }
    }
    if (smallest == i) return;
    swap_entries(i, smallest);
    i = smallest;
  }
}

void DeadlineQueue::swap_entries(std::size_t a, std::size_t b) {
  std::swap(heap_[a], heap_[b]);
  heap_[a]->heap_index_ = a;
  heap_[b]->heap_index_ = b;
}

// Sets the timer for the earliest deadline (moving it only earlier: one that fires early
// finds nothing due and sets it again).
void DeadlineQueue::rearm() {
  if (!timer_ || heap_.empty()) return;
  armed_for_ = heap_.front()->next();
  timer_->expires_at(armed_for_);  // cancels the wait for a later moment, if any
  timer_->async_wait([this](const boost::system::error_code& ec) {
    if (ec == boost::asio::error::operation_aborted) return;  // moved earlier, or stopped
    armed_for_ = Clock::time_point::max();
    on_timer();
  });
}

void DeadlineQueue::on_timer() {
  const auto now = Clock::now();
  while (!heap_.empty() && heap_.front()->next() <= now) {
    Deadline& due = *heap_.front();
    remove(due);
    due.fire(now);  // may arm, move or remove any deadline, this one too
  }
  if (armed_for_ == Clock::time_point::max()) rearm();
}

void Deadline::arm_at(Clock::time_point when) {
  deadline_ = when;
  fired_ = Fired::no;
  queue_.place(*this);
}

void Deadline::wake_at(Clock::time_point when) {
  wake_point_ = when;
  queue_.place(*this);
}

void Deadline::clear_wake_point() {
  wake_point_ = Clock::time_point::max();
  queue_.place(*this);
}

void Deadline::cancel() {
  deadline_ = wake_point_ = Clock::time_point::max();
  queue_.remove(*this);
}

void Deadline::fire(Clock::time_point now) {
  if (now < deadline_) {
    // The wake point: the deadline itself still stands.
    wake_point_ = Clock::time_point::max();
    fired_ = Fired::wake_point;
    queue_.place(*this);
    owner_.on_wake_point();
    return;
  }
  deadline_ = wake_point_ = Clock::time_point::max();
  fired_ = Fired::expired;
  owner_.on_deadline_expired();
}

}  // namespace stp
