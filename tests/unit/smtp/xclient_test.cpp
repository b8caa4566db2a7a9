// XCLIENT command building and xtext.
#include "smtp/xclient.hpp"

#include <gtest/gtest.h>

namespace stp {
namespace {

namespace ip = boost::asio::ip;

TEST(Xtext, EncodesPlusEqualsControlAndEightBit) {
  EXPECT_EQ(xtext_encode("mail.example.org"), "mail.example.org");
  EXPECT_EQ(xtext_encode("a+b=c"), "a+2Bb+3Dc");
  EXPECT_EQ(xtext_encode("a b\r\n"), "a+20b+0D+0A");
  EXPECT_EQ(xtext_encode("\xff"), "+FF");
  EXPECT_EQ(xtext_encode("[UNAVAILABLE]"), "[UNAVAILABLE]");
}

TEST(XclientAddress, V4V6AndMapped) {
  EXPECT_EQ(xclient_address(ip::make_address("192.0.2.1")), "192.0.2.1");
  EXPECT_EQ(xclient_address(ip::make_address("2001:db8::1")), "IPV6:2001:db8::1");
  EXPECT_EQ(xclient_address(ip::make_address("::ffff:192.0.2.7")), "192.0.2.7");
}

ClientIdentity sample_client() {
  ClientIdentity c;
  c.address = ip::make_address("2001:db8::5");
  c.port = 40000;
  c.local_address = ip::make_address("192.0.2.25");
  c.local_port = 587;
  c.name.status = ClientName::Status::found;
  c.name.name = "client.example.org";
  c.name.reverse_status = ClientName::Status::found;
  c.name.reverse_name = "client.example.org";
  return c;
}

TEST(BuildXclient, OnlyAdvertisedAttributesInFixedOrder) {
  smtp::MtaCapabilities mta;
  mta.xclient = true;
  mta.xclient_attributes = {"NAME", "ADDR", "PROTO", "HELO", "PORT", "DESTADDR", "DESTPORT"};
  EXPECT_EQ(build_xclient_command(mta, sample_client()),
            "XCLIENT ADDR=IPV6:2001:db8::5 PORT=40000 NAME=client.example.org "
            "DESTADDR=192.0.2.25 DESTPORT=587\r\n");
}

TEST(BuildXclient, UnknownNamesUsePostfixPlaceholders) {
  smtp::MtaCapabilities mta;
  mta.xclient = true;
  mta.xclient_attributes = {"ADDR", "NAME", "REVERSE_NAME"};
  auto client = sample_client();
  client.name.status = ClientName::Status::temporarily_unavailable;
  client.name.reverse_status = ClientName::Status::unavailable;
  EXPECT_EQ(build_xclient_command(mta, client),
            "XCLIENT ADDR=IPV6:2001:db8::5 NAME=[TEMPUNAVAIL] REVERSE_NAME=[UNAVAILABLE]\r\n");
}

TEST(BuildXclient, HostileNameIsEncoded) {
  smtp::MtaCapabilities mta;
  mta.xclient = true;
  mta.xclient_attributes = {"ADDR", "NAME"};
  auto client = sample_client();
  client.name.name = "a b\r\nRCPT TO:<x>";
  const auto command = build_xclient_command(mta, client);
  EXPECT_EQ(command.find('\n'), command.size() - 1);
  EXPECT_NE(command.find("NAME=a+20b+0D+0ARCPT+20TO:<x>"), std::string::npos);
}

}  // namespace
}  // namespace stp
