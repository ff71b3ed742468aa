// libFuzzer target for the wire decoders (issues 8 and 9, acceptance 4 of each): any bytes either
// decode to a frame that passes every header check, or are refused with an error; nothing may
// crash, overflow or read out of bounds (built with ASan and UBSan by tests/e2e/fuzz_frames.sh).
// The first byte picks the decoder: even, the parameter server's frame (the rest of the bytes);
// odd, the coordinator's message (CoordMsg, then its JSON body through coord::ParseRequest, the
// check the coordinator runs on every request).
// Built with -DRINGTRAIN_FRAME_SEEDS it is instead a program writing a seed corpus of valid frames.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "coord.pb.h"
#include "coordinator/request.h"
#include "parameter_server/wire.h"

namespace {
ringtrain::ps::FrameLimits Limits() {
  ringtrain::ps::FrameLimits lim;
  lim.max_header_bytes = 1 << 12;
  lim.max_payload_bytes = 1 << 16;
  return lim;
}
}  // namespace

#ifndef RINGTRAIN_FRAME_SEEDS
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ringtrain;
  if (size == 0) return 0;
  const bool coordinator = data[0] & 1;
  ++data;
  --size;
  if (coordinator) {
    proto::CoordMsg m;
    if (!m.ParseFromArray(data, static_cast<int>(size))) return 0;
    // The coordinator's own request check: an error for any body, never an exception.
    std::string op;
    auto r = coord::ParseRequest(m.json(), &op);
    if (r.ok() && (!r->is_object() || !(*r)["op"].is_string())) __builtin_trap();
    return 0;
  }
  proto::PsHeader h;
  const uint8_t* payload = nullptr;
  if (!ps::DecodeFrame(data, size, Limits(), &h, &payload).ok()) return 0;
  // A decoded frame: its payload lies inside the input, and re-encoding the header decodes again.
  if (payload < data || payload + h.payload_bytes() != data + size) __builtin_trap();
  std::string again = ps::EncodeHeader(h);
  again.append(reinterpret_cast<const char*>(payload), h.payload_bytes());
  proto::PsHeader h2;
  const uint8_t* p2 = nullptr;
  if (!ps::DecodeFrame(reinterpret_cast<const uint8_t*>(again.data()), again.size(), Limits(), &h2, &p2).ok())
    __builtin_trap();
  if (h2.type() != h.type() || h2.begin() != h.begin() || h2.end() != h.end()) __builtin_trap();
  return 0;
}
#else
int main(int argc, char** argv) {
  using namespace ringtrain;
  if (argc != 2) return 2;
  int n = 0;
  auto write = [&](proto::PsHeader h, size_t payload) {
    h.set_version(ps::kProtocolVersion);
    h.set_payload_bytes(payload);
    std::string f = std::string(1, '\0') + ps::EncodeHeader(h) + std::string(payload, '\x3f');
    const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(n++);
    std::FILE* out = std::fopen(path.c_str(), "wb");
    if (!out) return;
    std::fwrite(f.data(), 1, f.size(), out);
    std::fclose(out);
  };
  proto::PsHeader h;
  h.set_type(proto::PS_PUSH);
  h.set_job_id("job");
  h.set_worker(1);
  h.set_step(3);
  h.set_begin(16);
  h.set_end(32);
  write(h, 64);
  h.set_type(proto::PS_PULL);
  h.set_begin(0);
  h.set_end(1 << 20);
  h.add_scales(0.5f);
  write(h, 0);
  proto::PsHeader a;
  a.set_type(proto::PS_AUTH);
  a.set_nonce(std::string(32, 'n'));
  a.set_mac(std::string(32, 'm'));
  write(a, 0);
  proto::PsHeader r;
  r.set_type(proto::PS_NORMS_REPLY);
  r.set_step(2);
  write(r, 24);
  proto::PsHeader i;
  i.set_type(proto::PS_INIT);
  i.set_text("{\"workers\": 2}");
  write(i, 0);
  proto::CoordMsg cm;  // a coordinator request, selected by the odd first byte
  cm.set_version(1);
  cm.set_type(proto::CO_REQUEST);
  cm.set_json("{\"op\": \"submit\", \"spec\": {\"nproc\": 2}}");
  std::string body;
  cm.SerializeToString(&body);
  if (std::FILE* out = std::fopen((std::string(argv[1]) + "/seed-coord").c_str(), "wb")) {
    std::fputc(1, out);
    std::fwrite(body.data(), 1, body.size(), out);
    std::fclose(out);
  }
  return 0;
}
#endif
