// tls::VerifyCache: verdicts are replayed only for the same chain under the same verify
// settings, and never past their time to live, a certificate's notAfter or the CRL horizon.
//
// A replay is told from a fresh verification by asking the second time against a trust store
// that does not hold the CA: only a replayed verdict can then accept the chain.
#include "tls/verify_cache.hpp"

#include "test_certificates.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

namespace stp::tls {
namespace {

using namespace std::chrono_literals;

using test::make_certificate;
using test::Owned;

std::time_t fake_now = 0;
std::time_t fake_clock() {
  return fake_now;
}

class VerifyCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_now = std::time(nullptr);
    ca_key_.reset(EVP_EC_gen("P-256"));
    ca_ = make_certificate("test CA", ca_key_.get(), nullptr, nullptr, 86400, true);
    trusting_.reset(X509_STORE_new());
    X509_STORE_add_cert(trusting_.get(), ca_.get());
    empty_.reset(X509_STORE_new());
    ctx_.reset(SSL_CTX_new(TLS_server_method()));
    ssl_.reset(SSL_new(ctx_.get()));
    SSL_set_verify(ssl_.get(), SSL_VERIFY_PEER, nullptr);
  }

  Owned<X509> leaf(const std::string& cn, long valid_seconds = 86400) {
    Owned<EVP_PKEY> key(EVP_EC_gen("P-256"));
    return make_certificate(cn, key.get(), ca_.get(), ca_key_.get(), valid_seconds, false);
  }

  struct Result {
    int result;
    int error;
    int chain_length;
    VerifyCache::Outcome outcome;
  };
  // One verification of `certificate` (presented alone, or followed by `also`) as OpenSSL's
  // TLS code asks for it: the leaf is the first of the presented chain.
  Result check(VerifyCache& cache, X509_STORE* store, X509* certificate, X509* also = nullptr) {
    X509_STORE_CTX* store_ctx = X509_STORE_CTX_new();
    STACK_OF(X509)* presented = sk_X509_new_null();
    sk_X509_push(presented, certificate);
    if (also) sk_X509_push(presented, also);
    X509_STORE_CTX_init(store_ctx, store, certificate, presented);
    X509_STORE_CTX_set_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx(), ssl_.get());
    if (auto callback = SSL_get_verify_callback(ssl_.get())) {
      X509_STORE_CTX_set_verify_cb(store_ctx, callback);
    }
    if (SSL_get_verify_depth(ssl_.get()) >= 0) {
      X509_STORE_CTX_set_depth(store_ctx, SSL_get_verify_depth(ssl_.get()));
    }
    Result r;
    r.result = VerifyCache::verify(store_ctx, &cache);
    r.error = X509_STORE_CTX_get_error(store_ctx);
    const STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(store_ctx);
    r.chain_length = chain ? sk_X509_num(chain) : 0;
    r.outcome = VerifyCache::outcome(ssl_.get());
    X509_STORE_CTX_free(store_ctx);
    sk_X509_free(presented);
    return r;
  }

  Owned<EVP_PKEY> ca_key_;
  Owned<X509> ca_;
  Owned<X509_STORE> trusting_;
  Owned<X509_STORE> empty_;
  Owned<SSL_CTX> ctx_;
  Owned<SSL> ssl_;
};

TEST_F(VerifyCacheTest, AcceptanceIsReplayedWithoutVerifyingAgain) {
  VerifyCache cache(60s, 16, std::nullopt);
  cache.set_clock_for_test(&fake_clock);
  const auto client = leaf("client");
  const Result first = check(cache, trusting_.get(), client.get());
  EXPECT_EQ(first.result, 1);
  EXPECT_EQ(first.error, X509_V_OK);
  EXPECT_EQ(first.chain_length, 2);
  EXPECT_EQ(first.outcome, VerifyCache::Outcome::miss);

  fake_now += 59;
  const Result again = check(cache, empty_.get(), client.get());
  EXPECT_EQ(again.result, 1);
  EXPECT_EQ(again.error, X509_V_OK);
  EXPECT_EQ(again.chain_length, 0) << "no certificate is kept with the verdict";
  EXPECT_EQ(again.outcome, VerifyCache::Outcome::hit);
}

TEST_F(VerifyCacheTest, WithoutTheCacheTheEmptyStoreRefuses) {
  // The premise of every replay check here.
  VerifyCache cache(60s, 16, std::nullopt);
  const auto client = leaf("client");
  const Result r = check(cache, empty_.get(), client.get());
  EXPECT_EQ(r.result, 0);
  EXPECT_EQ(r.error, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

TEST_F(VerifyCacheTest, RefusalIsReplayedWithItsError) {
  VerifyCache cache(60s, 16, std::nullopt);
  cache.set_clock_for_test(&fake_clock);
  const auto client = leaf("client");
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 0);
  const Result again = check(cache, trusting_.get(), client.get());
  EXPECT_EQ(again.result, 0) << "the refusal is replayed even though this store would accept";
  EXPECT_EQ(again.error, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
  EXPECT_EQ(again.outcome, VerifyCache::Outcome::hit);
}

TEST_F(VerifyCacheTest, RefusalsThatMayNotRepeatAreNotKept) {
  // CRL checking with no CRL loaded: "unable to get certificate CRL", which a CRL file
  // appearing would change.
  VerifyCache cache(60s, 16, std::nullopt);
  X509_STORE_set_flags(trusting_.get(), X509_V_FLAG_CRL_CHECK);
  const auto client = leaf("client");
  for (int i = 0; i < 2; ++i) {
    const Result r = check(cache, trusting_.get(), client.get());
    EXPECT_EQ(r.result, 0);
    EXPECT_EQ(r.error, X509_V_ERR_UNABLE_TO_GET_CRL);
    EXPECT_EQ(r.outcome, VerifyCache::Outcome::miss);
  }
}

TEST_F(VerifyCacheTest, IssuerNotFoundIsNotKeptWhenTheStoreReadsFiles) {
  // A hashed directory or the system's store: the CA file may just not have been readable.
  VerifyCache cache(60s, 16, std::nullopt, true);
  const auto client = leaf("client");
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(check(cache, empty_.get(), client.get()).outcome, VerifyCache::Outcome::miss);
  }
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).result, 1);
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).outcome, VerifyCache::Outcome::hit)
      << "acceptances are still kept";
}

TEST_F(VerifyCacheTest, TheChainsNotAfterIsLeftForTheSession) {
  VerifyCache cache(60s, 16, std::nullopt);
  const auto client = leaf("client", 3600);
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).result, 1);
  const auto fresh = VerifyCache::chain_not_after(ssl_.get());
  ASSERT_TRUE(fresh.has_value());
  EXPECT_NEAR(static_cast<double>(*fresh), static_cast<double>(std::time(nullptr) + 3600), 5);
  ssl_.reset(SSL_new(ctx_.get()));
  SSL_set_verify(ssl_.get(), SSL_VERIFY_PEER, nullptr);
  EXPECT_FALSE(VerifyCache::chain_not_after(ssl_.get()).has_value());
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 1);
  EXPECT_EQ(VerifyCache::outcome(ssl_.get()), VerifyCache::Outcome::hit);
  EXPECT_EQ(VerifyCache::chain_not_after(ssl_.get()), fresh) << "replayed with the verdict";
}

TEST_F(VerifyCacheTest, AnotherChainIsVerifiedAfresh) {
  VerifyCache cache(60s, 16, std::nullopt);
  const auto first = leaf("first");
  const auto second = leaf("second");
  EXPECT_EQ(check(cache, trusting_.get(), first.get()).result, 1);
  const Result r = check(cache, empty_.get(), second.get());
  EXPECT_EQ(r.result, 0);
  EXPECT_EQ(r.outcome, VerifyCache::Outcome::miss);
}

TEST_F(VerifyCacheTest, TheRestOfThePresentedChainIsPartOfTheKey) {
  VerifyCache cache(60s, 16, std::nullopt);
  const auto client = leaf("client");
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).outcome, VerifyCache::Outcome::miss);
  EXPECT_EQ(check(cache, empty_.get(), client.get(), ca_.get()).outcome,
            VerifyCache::Outcome::miss);
  EXPECT_EQ(check(cache, empty_.get(), client.get()).outcome, VerifyCache::Outcome::hit);
}

TEST_F(VerifyCacheTest, VerifySettingsArePartOfTheKey) {
  VerifyCache cache(60s, 16, std::nullopt);
  const auto client = leaf("client");
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).result, 1);
  SSL_set_verify_depth(ssl_.get(), 3);
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 0) << "another depth";
  SSL_set_verify_depth(ssl_.get(), -1);
  SSL_set_verify(ssl_.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 0) << "another mode";
  SSL_set_verify(ssl_.get(), SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
  const Result lenient = check(cache, empty_.get(), client.get());
  EXPECT_EQ(lenient.result, 1) << "another callback, which accepts anything";
  EXPECT_NE(lenient.error, X509_V_OK);
  EXPECT_EQ(lenient.outcome, VerifyCache::Outcome::miss);
}

TEST_F(VerifyCacheTest, VerdictsEndWithTheirTimeToLive) {
  VerifyCache cache(60s, 16, std::nullopt);
  cache.set_clock_for_test(&fake_clock);
  const auto client = leaf("client");
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).result, 1);
  fake_now += 60;
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 0);
}

TEST_F(VerifyCacheTest, AcceptanceEndsAtTheCertificatesNotAfter) {
  VerifyCache cache(60s, 16, std::nullopt);
  cache.set_clock_for_test(&fake_clock);
  const auto client = leaf("client", 30);
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).result, 1);
  fake_now += 20;
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 1);
  fake_now += 15;  // past the leaf's notAfter, within the time to live
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 0);
}

TEST_F(VerifyCacheTest, AcceptanceEndsAtTheHorizon) {
  VerifyCache cache(60s, 16, fake_now + 10);
  cache.set_clock_for_test(&fake_clock);
  const auto client = leaf("client");
  EXPECT_EQ(check(cache, trusting_.get(), client.get()).result, 1);
  fake_now += 10;
  EXPECT_EQ(check(cache, empty_.get(), client.get()).result, 0);
}

TEST_F(VerifyCacheTest, FullCacheDropsTheOldest) {
  VerifyCache cache(60s, 2, std::nullopt);
  const auto a = leaf("a");
  const auto b = leaf("b");
  const auto c = leaf("c");
  for (X509* x : {a.get(), b.get(), c.get()}) EXPECT_EQ(check(cache, trusting_.get(), x).result, 1);
  EXPECT_EQ(check(cache, empty_.get(), a.get()).result, 0) << "dropped";
  EXPECT_EQ(check(cache, empty_.get(), c.get()).result, 1) << "kept";
}

}  // namespace
}  // namespace stp::tls
