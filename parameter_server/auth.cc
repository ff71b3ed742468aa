#include "parameter_server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace ringtrain::ps {

StatusOr<std::string> LoadToken(const std::string& token_file) {
  std::string token;
  if (!token_file.empty()) {
    std::ifstream f(token_file, std::ios::binary);
    if (!f) return InvalidArgument("token file " + token_file + " cannot be read");
    std::ostringstream ss;
    ss << f.rdbuf();
    token = ss.str();
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ' || token.back() == '\t'))
      token.pop_back();
    if (token.empty()) return InvalidArgument("token file " + token_file + " is empty");
    return token;
  }
  if (const char* e = std::getenv("RINGTRAIN_TOKEN")) token = e;
  if (token.empty())
    return InvalidArgument("no authentication token: set RINGTRAIN_TOKEN or give a token file (the same on every "
                           "server and worker)");
  return token;
}

std::string RandomBytes32() {
  std::string s(32, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), 32) != 1) RT_CHECK_MSG(false, "RAND_bytes failed");
  return s;
}

std::string ToHex(const std::string& bytes) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes.size());
  for (unsigned char c : bytes) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::string RandomTokenHex() { return ToHex(RandomBytes32()); }

std::string HmacSha256(const std::string& key, const std::string& msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
       msg.size(), out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

bool ConstantTimeEqual(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

namespace {
Status ExpectType(const proto::PsHeader& h, proto::PsType want, const std::string& who) {
  if (h.type() == proto::PS_ERROR) return InvalidArgument(who + " refused the connection: " + h.error());
  if (h.type() != want)
    return InvalidArgument(who + " sent " + TypeName(h.type()) + " during authentication (expected " + TypeName(want) + ")");
  return Status::Ok();
}
}  // namespace

Status ServerHandshake(FrameConn& c, const std::string& token, Clock::time_point deadline, const FrameLimits& lim) {
  proto::PsHeader h;
  h.set_type(proto::PS_CHALLENGE);
  const std::string ns = RandomBytes32();
  h.set_nonce(ns);
  RT_RETURN_IF_ERROR(c.Send(h, deadline));
  proto::PsHeader a;
  RT_RETURN_IF_ERROR(c.RecvHeader(&a, lim, deadline, 10));
  RT_RETURN_IF_ERROR(ExpectType(a, proto::PS_AUTH, "client " + c.peer()));
  if (!ConstantTimeEqual(a.mac(), HmacSha256(token, "client" + ns + a.nonce()))) {
    proto::PsHeader e;
    e.set_type(proto::PS_ERROR);
    e.set_error("authentication failed: wrong token");
    (void)c.Send(e, After(1));
    return InvalidArgument("client " + c.peer() + " failed authentication (wrong token)");
  }
  proto::PsHeader ok;
  ok.set_type(proto::PS_AUTH_OK);
  ok.set_mac(HmacSha256(token, "server" + a.nonce() + ns));
  return c.Send(ok, deadline);
}

Status ClientHandshake(FrameConn& c, const std::string& token, Clock::time_point deadline, const FrameLimits& lim) {
  const std::string who = "server " + c.peer();
  proto::PsHeader ch;
  RT_RETURN_IF_ERROR(c.RecvHeader(&ch, lim, deadline, 10));
  RT_RETURN_IF_ERROR(ExpectType(ch, proto::PS_CHALLENGE, who));
  const std::string nc = RandomBytes32();
  proto::PsHeader a;
  a.set_type(proto::PS_AUTH);
  a.set_nonce(nc);
  a.set_mac(HmacSha256(token, "client" + ch.nonce() + nc));
  RT_RETURN_IF_ERROR(c.Send(a, deadline));
  proto::PsHeader ok;
  Status s = c.RecvHeader(&ok, lim, deadline, 10);
  if (!s.ok()) return InvalidArgument(who + " rejected the token (" + s.message() + ")");
  RT_RETURN_IF_ERROR(ExpectType(ok, proto::PS_AUTH_OK, who));
  if (!ConstantTimeEqual(ok.mac(), HmacSha256(token, "server" + nc + ch.nonce())))
    return InvalidArgument(who + " does not hold the same token (its reply failed verification)");
  return Status::Ok();
}

}  // namespace ringtrain::ps
