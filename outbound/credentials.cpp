// The relay hosts' AUTH credentials; see credentials.hpp.
#include "outbound/credentials.hpp"

#include "smtp/text.hpp"

#include <openssl/crypto.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace stp::outbound {
namespace {

constexpr std::string_view kFlag = "--relay-auth-file: ";
constexpr std::string_view kSpace = " \t";

// The first word of `text` (which starts with no space), and the rest after its spaces.
std::pair<std::string_view, std::string_view> split_word(std::string_view text) {
  const auto end = text.find_first_of(kSpace);
  if (end == std::string_view::npos) return {text, {}};
  return {text.substr(0, end), text::trim(text.substr(end), kSpace)};
}

[[noreturn]] void fail(std::string_view origin, std::size_t line, std::string_view why) {
  throw std::invalid_argument(std::string(kFlag) + std::string(origin) + ":" +
                              std::to_string(line) + ": " + std::string(why));
}

}  // namespace

Credentials::~Credentials() {
  for (auto& [host, credential] : by_host_) {
    OPENSSL_cleanse(credential.password.data(), credential.password.size());
  }
}

Credentials Credentials::load(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw std::invalid_argument(std::string(kFlag) + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    throw std::invalid_argument(std::string(kFlag) + path + ": not a regular file");
  }
  if ((st.st_mode & S_IROTH) != 0) {
    throw std::invalid_argument(std::string(kFlag) + path +
                                ": readable by every user; it holds passwords (chmod o-r)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(std::string(kFlag) + path + ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  std::string content = text.str();
  auto credentials = parse(content, path);
  OPENSSL_cleanse(content.data(), content.size());
  return credentials;
}

Credentials Credentials::parse(std::string_view text, std::string_view origin) {
  Credentials credentials;
  std::size_t number = 0;
  while (!text.empty()) {
    ++number;
    const auto lf = text.find('\n');
    auto line = text.substr(0, lf);
    text = lf == std::string_view::npos ? std::string_view{} : text.substr(lf + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    line = text::trim(line, kSpace);
    if (line.empty() || line.front() == '#') continue;
    const auto [host, after_host] = split_word(line);
    const auto [user, password] = split_word(after_host);
    if (user.empty() || password.empty()) fail(origin, number, "expected HOST USER PASSWORD");
    const auto key = text::lower(host);
    if (credentials.by_host_.count(key) != 0) {
      fail(origin, number, "a second line for " + std::string(host));
    }
    credentials.by_host_.emplace(key, Credential{std::string(user), std::string(password)});
  }
  return credentials;
}

const Credential* Credentials::find(std::string_view host, std::uint16_t port) const {
  const auto name = text::lower(host);
  if (const auto it = by_host_.find(name + ":" + std::to_string(port)); it != by_host_.end()) {
    return &it->second;
  }
  const auto it = by_host_.find(name);
  return it == by_host_.end() ? nullptr : &it->second;
}

}  // namespace stp::outbound
