// A bounded, lazily allocated byte buffer for one direction of one connection: bytes are
// appended at the end and consumed from the front. Its memory is taken on first use and can
// be given back while a session idles, so idle sessions cost little.
#pragma once

#include <boost/asio/buffer.hpp>

#include <cassert>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>

namespace stp {

class InputBuffer {
 public:
  explicit InputBuffer(std::size_t capacity) : capacity_(capacity) {}

  std::string_view view() const { return {storage_.get() + begin_, end_ - begin_}; }
  std::size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  bool full() const { return size() == capacity_; }
  std::size_t capacity() const { return capacity_; }

  void consume(std::size_t n) {
    assert(n <= size());
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  void clear() { begin_ = end_ = 0; }

  // Free space at the end, moving unread bytes to the front first when that makes room.
  boost::asio::mutable_buffer prepare() {
    if (!storage_) storage_ = std::make_unique_for_overwrite<char[]>(capacity_);
    if (end_ == capacity_ && begin_ > 0) {
      std::memmove(storage_.get(), storage_.get() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    return {storage_.get() + end_, capacity_ - end_};
  }
  void commit(std::size_t n) {
    assert(n <= capacity_ - end_);
    end_ += n;
  }

  // Gives the memory back when nothing is buffered.
  void release_if_empty() {
    if (empty()) storage_.reset();
  }

 private:
  std::unique_ptr<char[]> storage_;
  std::size_t capacity_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace stp
