// Unit tests for --relay-auth-file: the line format, lookups by name and by name:port, the
// errors (each naming the flag, the file and the line), and the file checks (others must not
// read it).
#include "outbound/credentials.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace stp::outbound {
namespace {

using ::testing::HasSubstr;

TEST(Credentials, ReadsHostUserAndThePasswordToTheEndOfTheLine) {
  const auto c = Credentials::parse(
      "# relay hosts\n"
      "\n"
      "smtp.example.net  relay@example.org   s3cret with spaces  \r\n"
      "Backup.Example.NET:587 other pw\n",
      "auth");
  EXPECT_EQ(c.size(), 2u);
  const auto* main = c.find("SMTP.example.net", 25);
  ASSERT_NE(main, nullptr);
  EXPECT_EQ(main->user, "relay@example.org");
  EXPECT_EQ(main->password, "s3cret with spaces");
  EXPECT_EQ(c.find("backup.example.net", 25), nullptr);  // only for port 587
  ASSERT_NE(c.find("backup.example.net", 587), nullptr);
  EXPECT_EQ(c.find("backup.example.net", 587)->password, "pw");
  EXPECT_EQ(c.find("other.example.net", 25), nullptr);
}

TEST(Credentials, AHostWithItsPortWinsOverTheBareName) {
  const auto c = Credentials::parse("mx.example.net a pa\nmx.example.net:465 b pb\n", "auth");
  EXPECT_EQ(c.find("mx.example.net", 465)->user, "b");
  EXPECT_EQ(c.find("mx.example.net", 587)->user, "a");
}

TEST(Credentials, ErrorsNameTheFlagTheFileAndTheLine) {
  try {
    Credentials::parse("ok.example u p\nbroken.example only-a-user\n", "/etc/auth");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("--relay-auth-file: /etc/auth:2: expected HOST USER PASSWORD"));
  }
  EXPECT_THROW(Credentials::parse("a.example u p\nA.EXAMPLE v q\n", "f"), std::invalid_argument);
}

class CredentialsFile : public ::testing::Test {
 protected:
  void TearDown() override { std::filesystem::remove(path_); }
  void write(const std::string& text, mode_t mode) {
    std::ofstream(path_) << text;
    ::chmod(path_.c_str(), mode);
  }
  const std::string path_ =
      (std::filesystem::temp_directory_path() / ("stp-relay-auth-" + std::to_string(::getpid())))
          .string();
};

TEST_F(CredentialsFile, LoadsAFileOthersCannotRead) {
  write("smtp.example.net user pass\n", 0640);
  EXPECT_EQ(Credentials::load(path_).size(), 1u);
}

TEST_F(CredentialsFile, RefusesAWorldReadableFile) {
  write("smtp.example.net user pass\n", 0644);
  try {
    Credentials::load(path_);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("readable by every user"));
  }
}

TEST_F(CredentialsFile, AMissingFileIsAnErrorNamingTheFlag) {
  EXPECT_THROW(Credentials::load(path_ + "-missing"), std::invalid_argument);
}

}  // namespace
}  // namespace stp::outbound
