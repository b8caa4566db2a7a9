// tls::SessionCache: one session per key, the newest; bounded, least recently used dropped
// first; a session past its time or no longer resumable is never handed out; a failed
// handshake's session is forgotten only if it is still the one kept. Sessions here are bare
// SSL_SESSION objects with an id (what makes OpenSSL call one resumable).
#include "tls/session_cache.hpp"

#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include <atomic>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

namespace stp::tls {
namespace {

constexpr std::time_t kStart = 1'700'000'000;

// A resumable session made at `made`, offered for `timeout` seconds.
SSL_SESSION* session(long made = kStart, long timeout = 300) {
  static std::atomic<unsigned char> counter = 0;
  SSL_SESSION* s = SSL_SESSION_new();
  const unsigned char id[4] = {1, 2, 3, ++counter};
  SSL_SESSION_set1_id(s, id, sizeof id);
  SSL_SESSION_set_time(s, made);
  SSL_SESSION_set_timeout(s, timeout);
  return s;
}

// What get() hands out, compared with `expected` and given back.
bool holds(SessionCache& cache, const std::string& key, const SSL_SESSION* expected,
           std::time_t now = kStart + 1) {
  SSL_SESSION* got = cache.get(key, now);
  const bool same = got == expected;
  SSL_SESSION_free(got);
  return same;
}

TEST(SessionCache, HandsOutTheNewestSessionOfAKey) {
  SessionCache cache(4);
  EXPECT_EQ(cache.get("mx.example.net:25", kStart), nullptr);
  SSL_SESSION* first = session();
  cache.put("mx.example.net:25", first);
  EXPECT_TRUE(holds(cache, "mx.example.net:25", first));
  EXPECT_TRUE(holds(cache, "mx.example.net:25", first));  // again: not single-use
  EXPECT_EQ(cache.get("mx.example.net:587", kStart), nullptr);
  SSL_SESSION* second = session();
  cache.put("mx.example.net:25", second);
  EXPECT_TRUE(holds(cache, "mx.example.net:25", second));
  EXPECT_EQ(cache.size(), 1u);
}

TEST(SessionCache, DropsTheLeastRecentlyUsedWhenFull) {
  SessionCache cache(2);
  SSL_SESSION* a = session();
  SSL_SESSION* b = session();
  cache.put("a", a);
  cache.put("b", b);
  EXPECT_TRUE(holds(cache, "a", a));  // "a" is now the more recently used
  cache.put("c", session());
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_TRUE(holds(cache, "a", a));
  EXPECT_TRUE(holds(cache, "b", nullptr));
}

TEST(SessionCache, ForgetsWhatHasExpiredOrCannotBeResumed) {
  SessionCache cache(4);
  SSL_SESSION* brief = session(kStart, 60);
  cache.put("brief", brief);
  EXPECT_TRUE(holds(cache, "brief", brief, kStart + 59));
  EXPECT_TRUE(holds(cache, "brief", nullptr, kStart + 60));
  EXPECT_EQ(cache.size(), 0u);

  cache.put("no id", SSL_SESSION_new());  // not resumable: not kept
  EXPECT_EQ(cache.size(), 0u);

  // OpenSSL marks a kept session not resumable (a connection that used it ended without
  // close_notify); it is then forgotten when next asked for.
  SSL_SESSION* marked = session();
  cache.put("marked", marked);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
  ASSERT_EQ(SSL_CTX_add_session(ctx, marked), 1);
  ASSERT_EQ(SSL_CTX_remove_session(ctx, marked), 1);
  SSL_CTX_free(ctx);
  EXPECT_TRUE(holds(cache, "marked", nullptr));
  EXPECT_EQ(cache.size(), 0u);
}

TEST(SessionCache, ForgetsAFailedSessionOnlyIfItIsStillTheOneKept) {
  SessionCache cache(4);
  SSL_SESSION* old_one = session();
  SSL_SESSION_up_ref(old_one);  // the test's own reference, for the comparison below
  cache.put("mx", old_one);
  SSL_SESSION* new_one = session();
  cache.put("mx", new_one);  // a newer connection replaced it meanwhile
  cache.erase("mx", old_one);
  EXPECT_TRUE(holds(cache, "mx", new_one));
  cache.erase("mx", new_one);
  EXPECT_EQ(cache.size(), 0u);
  SSL_SESSION_free(old_one);
}

TEST(SessionCache, KeepsNothingWithoutCapacity) {
  SessionCache cache(0);
  cache.put("mx", session());
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.get("mx", kStart), nullptr);
}

TEST(SessionCache, TakesConcurrentUse) {
  SessionCache cache(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::string key = "relay" + std::to_string((i + t) % 12);
        if (i % 3 == 0) {
          cache.put(key, session());
        } else {
          SSL_SESSION_free(cache.get(key, kStart + 1));
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_LE(cache.size(), 8u);
}

}  // namespace
}  // namespace stp::tls
