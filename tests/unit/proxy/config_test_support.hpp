// What the tests of the configuration (config*_test.cpp, mirroring proxy/config*.cpp) share:
// parse_config run on arguments and an environment of the test's own, the error it reports,
// a --config file that lives as long as the test, and the listeners as text.
#pragma once

#include "proxy/config.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <climits>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace stp::test {

using Args = std::vector<std::string>;
using Env = std::map<std::string, std::string>;

inline EnvLookup lookup_in(Env env) {
  return [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    const auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

inline std::optional<Config> run(const Args& args, const Env& env, std::ostream& out) {
  std::vector<const char*> argv{"smtp-tls-proxy"};
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  return parse_config(static_cast<int>(argv.size()), argv.data(), lookup_in(env), out);
}

inline Config parse(const Args& args, const Env& env = {}) {
  std::ostringstream out;
  std::optional<Config> config = run(args, env, out);
  EXPECT_TRUE(config.has_value());
  EXPECT_EQ(out.str(), "");
  return config.value_or(Config{});
}

// The ConfigError message for these arguments; fails the test when there is none.
inline std::string error_of(const Args& args, const Env& env = {}) {
  std::ostringstream out;
  try {
    run(args, env, out);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return {};
}

// A config file that exists for the test's lifetime.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("stp-config-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
    std::ofstream(path_) << content;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline std::string endpoint_text(const Listener& listener) {
  std::ostringstream text;
  text << listener.endpoint << (listener.implicit_tls ? " tls" : "");
  return text.str();
}

inline std::vector<std::string> listeners_of(const Config& config) {
  std::vector<std::string> result;
  for (const Listener& listener : config.listeners) result.push_back(endpoint_text(listener));
  return result;
}

inline std::string machine_name() {
  char name[HOST_NAME_MAX + 1] = {};
  EXPECT_EQ(::gethostname(name, sizeof name - 1), 0);
  return name;
}

inline boost::asio::ip::address ip(const char* text) {
  return boost::asio::ip::make_address(text);
}

}  // namespace stp::test
