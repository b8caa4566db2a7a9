// Fuzzes parse_config (proxy/config.hpp): the command line, the environment and a --config
// file, all built from the input.
//
// Input, as text lines (each with the escapes of fuzz_util.hpp: \n, \t, \xHH...):
//   env:NAME=VALUE   a variable the lookup answers
//   file:TEXT        a line of the --config file
//   anything else    one command-line argument (argv[0] is the program's name)
// "@N" at the start of an argument, a NAME or a file line stands for flag number N (modulo the
// number of flags, read from --help at start-up so that new flags are reached too): "--flag" in
// an argument, SMTP_TLS_PROXY_FLAG in a NAME, "flag" in a file line.
//
// The only file parse_config may open is one this target owns: whatever path the input gives
// to --config (as the next argument, as --config=PATH or in SMTP_TLS_PROXY_CONFIG) is replaced
// by a temporary file holding the input's file: lines, or (for a path ending in '!') by a path
// next to it that never exists. An empty path is kept (parse_config rejects it unread).
//
// Checks:
// - parse_config returns a Config, or nullopt after printing --help or --version, or throws
//   ConfigError; any other exception is a bug;
// - a ConfigError names what is wrong: "--<flag as written>: ...", "<argument>: unknown flag",
//   "<argument>: unexpected argument ..." or "command line: ...", in one line of printable
//   text (operator text is escaped);
// - only SMTP_TLS_PROXY_* variables are looked up;
// - a returned Config holds only validated values: listeners present and distinct, implicit
//   TLS where asked, ports non-zero, a backend host without a NUL, no more keys than certificates,
//   every duration from 1 s to a year, limits in their documented ranges, enumerations among their
//   names.
#include "fuzz_util.hpp"
#include "proxy/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::string_view kEnvPrefix = "SMTP_TLS_PROXY_";

std::vector<std::string> g_flags;  // names without "--", in --help's order
std::string g_config_path;         // the one file parse_config may read
std::string g_missing_path;        // never created

bool known_flag(std::string_view name) {
  return std::find(g_flags.begin(), g_flags.end(), name) != g_flags.end();
}

std::string env_name(std::string_view flag) {
  std::string name(kEnvPrefix);
  for (const char c : flag) name += c == '-' ? '_' : stp::fuzz::upper(c);
  return name;
}

// "@N..." -> the flag's name and the rest; anything else unchanged (nullopt).
std::optional<std::pair<std::string, std::string_view>> flag_reference(std::string_view text) {
  if (text.size() < 2 || text[0] != '@' || text[1] < '0' || text[1] > '9') return std::nullopt;
  std::size_t end = 1;
  std::size_t number = 0;
  while (end < text.size() && text[end] >= '0' && text[end] <= '9' && end < 6) {
    number = number * 10 + static_cast<std::size_t>(text[end] - '0');
    ++end;
  }
  return std::pair{g_flags[number % g_flags.size()], text.substr(end)};
}

std::string path_for(std::string_view given) {
  if (given.empty()) return {};
  return given.back() == '!' ? g_missing_path : g_config_path;
}

// The flags, from the help text's "  --name ..." lines.
std::vector<std::string> read_flags() {
  const char* const argv[] = {"smtp-tls-proxy", "--help"};
  std::ostringstream out;
  const auto config = stp::parse_config(
      2, argv, [](const std::string&) { return std::optional<std::string>{}; }, out);
  FUZZ_CHECK(!config.has_value());
  std::vector<std::string> flags;
  std::istringstream lines(out.str());
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("  --")) continue;
    flags.push_back(line.substr(4, line.find(' ', 4) - 4));
  }
  FUZZ_CHECK(!flags.empty() && std::count(flags.begin(), flags.end(), "config") == 1, out.str());
  return flags;
}

bool printable_line(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    const auto b = static_cast<unsigned char>(c);
    return b >= 0x20 && b != 0x7f;
  });
}

void check_error(const std::string& message) {
  FUZZ_CHECK(!message.empty(), message);
  // Some paths put the operator's text in unescaped (an option's name, a host list's item).
  FUZZ_CHECK(printable_line(message) || stp::fuzz::known("config-unescaped-message"), message);
  // Program_options names no option for "--=" or "--=x": the message starts with ": ".
  if (message.starts_with(": ") && stp::fuzz::known("config-unnamed-option")) return;
  if (message.ends_with(": unknown flag") || message.starts_with("command line: ") ||
      message.find(": unexpected argument") != std::string::npos) {
    return;
  }
  // Otherwise the flag as written: one of ours, or what the user typed (e.g. "--listen;=").
  FUZZ_CHECK(message.starts_with("--") && message.find(": ", 2) != std::string::npos, message);
}

void check_config(const stp::Config& c) {
  using std::chrono::seconds;
  FUZZ_CHECK(!c.listeners.empty());
  for (std::size_t i = 0; i < c.listeners.size(); ++i) {
    const auto& l = c.listeners[i];
    FUZZ_CHECK(l.endpoint.port() != 0);
    const bool implicit =
        c.tls_on_connect || std::count(c.tls_on_connect_ports.begin(), c.tls_on_connect_ports.end(),
                                       l.endpoint.port()) > 0;
    FUZZ_CHECK(l.implicit_tls == implicit);
    for (std::size_t j = 0; j < i; ++j) FUZZ_CHECK(c.listeners[j].endpoint != l.endpoint);
  }
  for (const auto port : c.tls_on_connect_ports) FUZZ_CHECK(port != 0);
  for (const auto port : c.tls_require_ports) FUZZ_CHECK(port != 0);
  FUZZ_CHECK(!c.backend_host.empty() && c.backend_port != 0);
  // A name or an address: never with a NUL (make_address() reads only what precedes it).
  FUZZ_CHECK(
      c.backend_host.find('\0') == std::string::npos || stp::fuzz::known("config-backend-nul"),
      c.backend_host);
  FUZZ_CHECK(!c.hostname.empty() && c.hostname.size() <= 253, c.hostname);
  FUZZ_CHECK(c.tls_privatekeys.size() <= c.tls_certificates.size());
  for (const auto& f : c.tls_certificates) FUZZ_CHECK(!f.empty());
  for (const auto& f : c.tls_privatekeys) FUZZ_CHECK(!f.empty());
  FUZZ_CHECK(c.tls_require_ciphers.find('_') == std::string::npos, c.tls_require_ciphers);
  FUZZ_CHECK(c.tls_min_protocol == "TLSv1.2" || c.tls_min_protocol == "TLSv1.3");
  FUZZ_CHECK(c.tls_verify_depth >= 1 && c.tls_verify_depth <= 100);
  const bool asks = !c.tls_verify_hosts.empty() || !c.tls_try_verify_hosts.empty() ||
                    !c.tls_require_verified_hosts.empty();
  FUZZ_CHECK(!asks || !c.tls_verify_certificates.empty());
  for (const seconds d : {c.smtp_receive_timeout, c.tls_handshake_timeout, c.shutdown_grace,
                          c.backend_probe_interval, c.reload_check_interval}) {
    FUZZ_CHECK(d >= seconds(1) && d <= seconds(365LL * 24 * 3600));
  }
  FUZZ_CHECK(c.max_line_length >= 512 && c.max_line_length <= 1024 * 1024);
  FUZZ_CHECK(c.threads >= 1 && c.threads <= 256);
  const std::string_view levels[] = {"trace", "debug", "info", "warn", "error"};
  FUZZ_CHECK(std::find(std::begin(levels), std::end(levels), c.log_level) != std::end(levels));
  if (c.metrics_listen) FUZZ_CHECK(c.metrics_listen->port() != 0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/stp-fuzz-config-XXXXXX";
  const int fd = ::mkstemp(pattern.data());
  FUZZ_CHECK(fd >= 0, pattern);
  ::close(fd);
  g_config_path = pattern;
  g_missing_path = pattern + ".missing";
  std::atexit([] { std::remove(g_config_path.c_str()); });
  g_flags = read_flags();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  std::vector<std::string> args = {"smtp-tls-proxy"};
  std::map<std::string, std::string> env;
  std::string file;
  bool file_wanted = false;
  for (const std::string_view raw : stp::fuzz::split(input, '\n')) {
    if (raw.starts_with("env:")) {
      const std::string_view rest = raw.substr(4);
      const std::size_t eq = rest.find('=');
      if (eq == std::string_view::npos) continue;
      std::string name = stp::fuzz::unescape(rest.substr(0, eq));
      if (const auto ref = flag_reference(name))
        name = env_name(ref->first) + std::string(ref->second);
      env[name] = stp::fuzz::unescape(rest.substr(eq + 1));
    } else if (raw.starts_with("file:")) {
      std::string line = stp::fuzz::unescape(raw.substr(5));
      if (const auto ref = flag_reference(line)) line = ref->first + std::string(ref->second);
      file += line + "\n";
    } else {
      std::string arg = stp::fuzz::unescape(raw);
      if (const auto ref = flag_reference(arg)) arg = "--" + ref->first + std::string(ref->second);
      args.push_back(arg.substr(0, arg.find('\0')));  // what a C string can carry
    }
  }

  // Point every --config at our file.
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      std::string& value = args[i + 1];
      const bool flag = value.starts_with("--") && known_flag(value.substr(2, value.find('=') - 2));
      if (!flag) value = path_for(value);
      file_wanted = file_wanted || !value.empty();
      ++i;
    } else if (args[i].starts_with("--config=")) {
      args[i] = "--config=" + path_for(std::string_view(args[i]).substr(9));
      file_wanted = file_wanted || args[i].size() > 9;
    }
  }
  if (const auto it = env.find(env_name("config")); it != env.end()) {
    it->second = path_for(it->second);
    file_wanted = file_wanted || !it->second.empty();
  }
  if (file_wanted) {
    std::ofstream out(g_config_path, std::ios::binary | std::ios::trunc);
    out << file;
    FUZZ_CHECK(out.good(), g_config_path);
  }

  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::vector<std::string> looked_up;
  const stp::EnvLookup lookup = [&](const std::string& name) -> std::optional<std::string> {
    looked_up.push_back(name);
    const auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };

  std::ostringstream printed;
  try {
    const auto config =
        stp::parse_config(static_cast<int>(argv.size()), argv.data(), lookup, printed);
    if (config) {
      check_config(*config);
    } else {
      const std::string text = printed.str();
      FUZZ_CHECK(text.starts_with("Usage: ") || text.starts_with("smtp-tls-proxy "), text);
    }
  } catch (const stp::ConfigError& e) {
    check_error(e.what());
  } catch (const std::exception& e) {
    stp::fuzz::fail("parse_config threw something else than ConfigError", __FILE__, __LINE__,
                    e.what());
  }
  for (const auto& name : looked_up) FUZZ_CHECK(name.starts_with(kEnvPrefix), name);
  return 0;
}
