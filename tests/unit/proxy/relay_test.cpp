// relay::data and relay::chunk: message content from a scripted source (the client's side,
// given in pieces) to an Upstream connected to a loopback peer that keeps every byte it gets.
// What is checked is what the peer received, what is left in the source's buffer, the result,
// and the deadline the relay gives the source for each read (none while the bytes go
// somewhere; one, for all the reads that remain, once they go nowhere).
#include "proxy/relay.hpp"
#include "tests/unit/proxy/loopback_peer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace stp {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using relay::Clock;
using relay::ContentResult;
using test::LoopbackPeer;
using Status = ContentResult::Status;

constexpr auto kNever = Clock::time_point::max();
constexpr Clock::duration kTrickleLimit = 30s;

// The client's side as the relay sees it: what is buffered, and more on request, one piece at
// a time; false when the pieces are used up (the client went away).
class ScriptedSource {
 public:
  explicit ScriptedSource(std::vector<std::string> pieces, std::size_t capacity = 4096)
      : pieces_(std::move(pieces)), input_(capacity) {}

  InputBuffer& input() { return input_; }
  asio::awaitable<bool> read_more(Clock::time_point deadline) {
    deadlines.push_back(deadline);
    if (next_ == pieces_.size()) co_return false;
    const std::string& piece = pieces_[next_++];
    const auto space = input_.prepare();
    EXPECT_LE(piece.size(), space.size()) << "the relay asked for more with a full buffer";
    const auto n = std::min(piece.size(), space.size());
    std::memcpy(space.data(), piece.data(), n);
    input_.commit(n);
    co_return true;
  }
  // Puts `bytes` in the buffer at once, as bytes read with the command line would be.
  void buffer(std::string_view bytes) {
    const auto space = input_.prepare();
    ASSERT_LE(bytes.size(), space.size());
    std::memcpy(space.data(), bytes.data(), bytes.size());
    input_.commit(bytes.size());
  }

  std::vector<Clock::time_point> deadlines;

 private:
  std::vector<std::string> pieces_;
  std::size_t next_ = 0;
  InputBuffer input_;
};

class RelayTest : public test::LoopbackTest {
 protected:
  // Runs `relay_part` against a connected hop and returns what the peer received. With
  // `lose_hop` the hop is abandoned before it starts.
  std::string relay_to_peer(const std::function<asio::awaitable<void>()>& relay_part,
                            bool lose_hop = false) {
    std::string received;
    run([&](LoopbackPeer& peer) -> asio::awaitable<void> { received = co_await peer.rest(); },
        [&]() -> asio::awaitable<void> {
          if (!co_await connect()) co_return;
          if (lose_hop) upstream_.abandon();
          started_ = Clock::now();
          co_await relay_part();
          ended_ = Clock::now();
          upstream_.close();
        });
    return received;
  }

  asio::awaitable<void> data(ScriptedSource& source, std::string header, BareLfPolicy policy) {
    result_ = co_await relay::data(source, upstream_, filter_, std::move(header), policy,
                                   kTrickleLimit, out_);
    EXPECT_TRUE(out_.empty());
  }

  // Every deadline given after the first `free` reads is one and the same, kTrickleLimit from
  // some moment while the relay ran.
  void expect_one_trickle_deadline(const ScriptedSource& source, std::size_t free) {
    ASSERT_GT(source.deadlines.size(), free);
    for (std::size_t i = 0; i < free; ++i) EXPECT_EQ(source.deadlines[i], kNever) << i;
    const auto deadline = source.deadlines[free];
    EXPECT_GE(deadline, started_ + kTrickleLimit);
    EXPECT_LE(deadline, ended_ + kTrickleLimit);
    for (std::size_t i = free; i < source.deadlines.size(); ++i) {
      EXPECT_EQ(source.deadlines[i], deadline) << i;
    }
  }

  DataFilter filter_{BareLfPolicy::normalize};
  std::string out_;
  ContentResult result_{Status::source_ended};
  Clock::time_point started_;
  Clock::time_point ended_;
};

// ---- relay::data -------------------------------------------------------------------------

TEST_F(RelayTest, DataGoesToTheFinalDotWithTheHeaderInFrontAndWhatFollowsStays) {
  ScriptedSource source({"Subject: hi\r\n\r\nline\r\n..leading dot\r\n", ".\r\nQUIT\r\n"});
  const auto received =
      relay_to_peer([&] { return data(source, "Received: by test\r\n", BareLfPolicy::normalize); });
  EXPECT_EQ(received, "Received: by test\r\nSubject: hi\r\n\r\nline\r\n..leading dot\r\n.\r\n");
  EXPECT_EQ(result_.status, Status::relayed);
  EXPECT_FALSE(result_.normalized);
  EXPECT_EQ(source.input().view(), "QUIT\r\n");
  for (const auto deadline : source.deadlines) EXPECT_EQ(deadline, kNever);
}

TEST_F(RelayTest, DataEndSplitAcrossReadsIsFound) {
  ScriptedSource source({"body\r", "\n", ".", "\r", "\n"});
  const auto received = relay_to_peer([&] { return data(source, "", BareLfPolicy::normalize); });
  EXPECT_EQ(received, "body\r\n.\r\n");
  EXPECT_EQ(result_.status, Status::relayed);
  EXPECT_TRUE(source.input().empty());
}

TEST_F(RelayTest, AnEmptyMessageIsItsFinalDot) {
  ScriptedSource source({".\r\n"});
  const auto received =
      relay_to_peer([&] { return data(source, "Received: x\r\n", BareLfPolicy::normalize); });
  EXPECT_EQ(received, "Received: x\r\n.\r\n");
  EXPECT_EQ(result_.status, Status::relayed);
}

// <LF>.<LF> is no end of data: the MTA gets it as a dot-stuffed line between CRLFs.
TEST_F(RelayTest, BareLineEndingsAreNormalizedAndNeverEndTheMessage) {
  ScriptedSource source({"a\n.\nb\r\n.\r\n"});
  const auto received = relay_to_peer([&] { return data(source, "", BareLfPolicy::normalize); });
  EXPECT_EQ(received, "a\r\n..\r\nb\r\n.\r\n");
  EXPECT_EQ(result_.status, Status::relayed);
  EXPECT_TRUE(result_.normalized);
}

TEST_F(RelayTest, AFirstLineThatWouldContinueTheHeaderGetsAnEmptyLineBeforeIt) {
  // The first piece is only a dot: the relay must read on to know what the line starts with.
  ScriptedSource source({".", " folded\r\n.\r\n"});
  const auto received =
      relay_to_peer([&] { return data(source, "Received: x\r\n", BareLfPolicy::normalize); });
  EXPECT_EQ(received, "Received: x\r\n\r\n. folded\r\n.\r\n");
  EXPECT_EQ(result_.status, Status::relayed);
}

TEST_F(RelayTest, ABareLineEndingRefusedAbandonsTheHopAndTheRestIsReadToItsEnd) {
  ScriptedSource source({"ok line\r\nbad\nline\r\n", "more\r\n", ".\r\nNEXT"});
  const auto received =
      relay_to_peer([&] { return data(source, "Received: x\r\n", BareLfPolicy::reject); });
  EXPECT_EQ(received, "");  // nothing of a message that will not be delivered
  EXPECT_EQ(result_.status, Status::bare_line_ending);
  EXPECT_TRUE(upstream_.lost());
  EXPECT_EQ(source.input().view(), "NEXT");
  expect_one_trickle_deadline(source, 1);
}

TEST_F(RelayTest, RefusedContentEndsAtADotLineBetweenBareLineEndings) {
  // A client that ends every line with a bare LF never sends CRLF.CRLF: its "\n.\n" ends
  // the refused content, so it is answered when it has finished rather than at its timeout.
  ScriptedSource source({"Subject: x\n\nbody\n", "..\n.x\n.", "\nQUIT\r\n"});
  const auto received = relay_to_peer([&] { return data(source, "", BareLfPolicy::reject); });
  EXPECT_EQ(received, "");
  EXPECT_EQ(result_.status, Status::bare_line_ending);
  EXPECT_EQ(source.input().view(), "QUIT\r\n");
}

TEST(LooseEnd, FindsALoneDotBetweenAnyLineBreaks) {
  using relay::LooseEnd;
  for (const std::string_view end : {"\n.\n", "\r.\r", "\r\n.\r\n", "\n.\r\n", "\r.\n"}) {
    LooseEnd scan;
    const std::string input = "x" + std::string(end) + "after";
    const auto found = scan.feed(input);
    EXPECT_TRUE(found.found) << end;
    EXPECT_EQ(input.substr(found.consumed), "after") << end;
  }
  LooseEnd scan;  // ".." (stuffed), ".x" and a dot inside a line end nothing
  EXPECT_FALSE(scan.feed("\n..\n.x\na.\n").found);
}

TEST_F(RelayTest, DataFromASourceThatEndsEarlyEndsTheRelay) {
  ScriptedSource source({"half a message\r\n"});
  const auto received = relay_to_peer([&] { return data(source, "", BareLfPolicy::normalize); });
  EXPECT_EQ(received, "half a message\r\n");
  EXPECT_EQ(result_.status, Status::source_ended);
}

TEST_F(RelayTest, DataForALostHopIsReadToItsEndWithinOneTimeout) {
  ScriptedSource source({"one\r\n", "two\r\n", ".\r\n"});
  const auto received =
      relay_to_peer([&] { return data(source, "Received: x\r\n", BareLfPolicy::normalize); }, true);
  EXPECT_EQ(received, "");
  EXPECT_EQ(result_.status, Status::relayed);
  expect_one_trickle_deadline(source, 0);
}

TEST_F(RelayTest, DataThroughASmallBufferArrivesWhole) {
  std::string message;
  for (int i = 0; i < 20; ++i) message += "line " + std::to_string(i) + "\r\n.stuffed\r\n";
  std::vector<std::string> pieces;
  const std::string all = message + ".\r\n";
  for (std::size_t at = 0; at < all.size(); at += 16) pieces.push_back(all.substr(at, 16));
  ScriptedSource source(pieces, 16);
  const auto received = relay_to_peer([&] { return data(source, "", BareLfPolicy::normalize); });
  EXPECT_EQ(received, all);
  EXPECT_EQ(result_.status, Status::relayed);
}

// ---- relay::chunk ------------------------------------------------------------------------

TEST_F(RelayTest, AChunkIsExactlyItsSizeAfterWhatGoesBeforeIt) {
  ScriptedSource source({"0123", "456789QUIT\r\n"});
  bool complete = false;
  const auto received = relay_to_peer([&]() -> asio::awaitable<void> {
    out_ = "BDAT 10 LAST\r\n";
    complete = co_await relay::chunk(source, upstream_, 10, true, kTrickleLimit, out_);
  });
  EXPECT_TRUE(complete);
  EXPECT_EQ(received, "BDAT 10 LAST\r\n0123456789");
  EXPECT_EQ(source.input().view(), "QUIT\r\n");
  EXPECT_TRUE(out_.empty());
  for (const auto deadline : source.deadlines) EXPECT_EQ(deadline, kNever);
}

TEST_F(RelayTest, AChunkAlreadyBufferedNeedsNoRead) {
  ScriptedSource source({});
  source.buffer("abcdefNOOP\r\n");
  bool complete = false;
  const auto received = relay_to_peer([&]() -> asio::awaitable<void> {
    out_ = "BDAT 6\r\n";
    complete = co_await relay::chunk(source, upstream_, 6, true, kTrickleLimit, out_);
  });
  EXPECT_TRUE(complete);
  EXPECT_EQ(received, "BDAT 6\r\nabcdef");
  EXPECT_EQ(source.input().view(), "NOOP\r\n");
  EXPECT_TRUE(source.deadlines.empty());
}

TEST_F(RelayTest, AChunkOfNothingSendsWhatGoesBefore) {
  ScriptedSource source({});
  bool complete = false;
  const auto received = relay_to_peer([&]() -> asio::awaitable<void> {
    out_ = "BDAT 0 LAST\r\n";
    complete = co_await relay::chunk(source, upstream_, 0, true, kTrickleLimit, out_);
  });
  EXPECT_TRUE(complete);
  EXPECT_EQ(received, "BDAT 0 LAST\r\n");
  EXPECT_TRUE(source.deadlines.empty());
}

TEST_F(RelayTest, AChunkNotForwardedIsReadAndDroppedWithinOneTimeout) {
  ScriptedSource source({"12345", "67890", "RSET\r\n"});
  bool complete = false;
  const auto received = relay_to_peer([&]() -> asio::awaitable<void> {
    out_ = "RSET\r\n";  // what goes before still goes
    complete = co_await relay::chunk(source, upstream_, 10, false, kTrickleLimit, out_);
  });
  EXPECT_TRUE(complete);
  EXPECT_EQ(received, "RSET\r\n");
  EXPECT_TRUE(source.input().empty());
  expect_one_trickle_deadline(source, 0);
}

TEST_F(RelayTest, AChunkForALostHopIsReadToItsEnd) {
  ScriptedSource source({"12345", "67890"});
  bool complete = false;
  const auto received = relay_to_peer(
      [&]() -> asio::awaitable<void> {
        complete = co_await relay::chunk(source, upstream_, 10, true, kTrickleLimit, out_);
      },
      true);
  EXPECT_TRUE(complete);
  EXPECT_EQ(received, "");
  expect_one_trickle_deadline(source, 0);
}

TEST_F(RelayTest, AChunkFromASourceThatEndsEarlyIsIncomplete) {
  ScriptedSource source({"12345"});
  bool complete = true;
  const auto received = relay_to_peer([&]() -> asio::awaitable<void> {
    out_ = "BDAT 10\r\n";
    complete = co_await relay::chunk(source, upstream_, 10, true, kTrickleLimit, out_);
  });
  EXPECT_FALSE(complete);
  EXPECT_EQ(received, "BDAT 10\r\n12345");
}

TEST_F(RelayTest, AChunkLargerThanTheBufferGoesThroughInPieces) {
  std::string chunk;
  for (int i = 0; i < 100; ++i) chunk += static_cast<char>('a' + i % 26);
  std::vector<std::string> pieces;
  for (std::size_t at = 0; at < chunk.size(); at += 8) pieces.push_back(chunk.substr(at, 8));
  ScriptedSource source(pieces, 8);
  bool complete = false;
  const auto received = relay_to_peer([&]() -> asio::awaitable<void> {
    complete = co_await relay::chunk(source, upstream_, chunk.size(), true, kTrickleLimit, out_);
  });
  EXPECT_TRUE(complete);
  EXPECT_EQ(received, chunk);
}

}  // namespace
}  // namespace stp
