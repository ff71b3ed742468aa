// Shared-token authentication for ringtrain's own TCP services (parameter server, coordinator):
// HMAC-SHA256 challenge-response over FrameConn, before any other message, in both directions.
//   server -> CHALLENGE(nonce_s);  client -> AUTH(nonce_c, HMAC(token, "client" nonce_s nonce_c));
//   server checks it (constant-time compare) -> AUTH_OK(HMAC(token, "server" nonce_c nonce_s)),
//   which the client checks in turn. The token itself never crosses the wire.
#pragma once

#include <string>

#include "core/status.h"
#include "parameter_server/wire.h"

namespace ringtrain::ps {

// The shared token: the contents of token_file (trailing whitespace removed) when given, else the
// RINGTRAIN_TOKEN environment variable. Never a command-line argument (visible in ps(1)).
// An empty or missing token is an error naming both places.
StatusOr<std::string> LoadToken(const std::string& token_file);

// 32 random bytes from OpenSSL's CSPRNG.
std::string RandomBytes32();
// Lower-case hexadecimal, two digits per byte.
std::string ToHex(const std::string& bytes);
// 64 hexadecimal digits of fresh random bytes (ringtrain launch's per-job token).
std::string RandomTokenHex();
std::string HmacSha256(const std::string& key, const std::string& msg);
// Constant-time equality (CRYPTO_memcmp); false when the lengths differ.
bool ConstantTimeEqual(const std::string& a, const std::string& b);

// The two sides of the handshake. The server side returns Unauthenticated-style errors
// (kInvalidArgument) that name the peer; the client side names the server.
Status ServerHandshake(FrameConn& c, const std::string& token, Clock::time_point deadline, const FrameLimits& lim);
Status ClientHandshake(FrameConn& c, const std::string& token, Clock::time_point deadline, const FrameLimits& lim);

}  // namespace ringtrain::ps
