// The one place CUDA runtime, cuBLAS and NCCL return codes become a Status carrying the library's
// own message ("cudaMalloc of 4096 bytes: out of memory"). Include only from code built with CUDA.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/status.h"

#if __has_include(<nccl.h>)
#include <nccl.h>
#define RINGTRAIN_CHECKS_HAVE_NCCL 1
#endif

namespace ringtrain::cuda {

inline Status CudaStatus(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return Status::Ok();
  std::string m = what;
  m.append(": ").append(cudaGetErrorString(e)).append(" (").append(cudaGetErrorName(e)).append(")");
  return Internal(m);
}

#ifdef RINGTRAIN_CHECKS_HAVE_NCCL
// comm (may be null) adds ncclGetLastError's detail, which names the failing peer when NCCL knows it.
inline Status NcclStatus(ncclResult_t r, const std::string& what, ncclComm_t comm = nullptr) {
  if (r == ncclSuccess || r == ncclInProgress) return Status::Ok();
  std::string m = what;
  m.append(": NCCL: ").append(ncclGetErrorString(r));
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && last[0] != '\0') m.append(" (").append(last).append(")");
  switch (r) {
    case ncclInvalidArgument:
    case ncclInvalidUsage: return InvalidArgument(m);
    case ncclRemoteError:
    case ncclSystemError: return Unavailable(m);
    default: return Internal(m);
  }
}
#endif

}  // namespace ringtrain::cuda

#define RT_CUDA_RETURN_IF_ERROR(expr, what)                                          \
  do {                                                                               \
    ::ringtrain::Status _cst = ::ringtrain::cuda::CudaStatus((expr), (what));        \
    if (!_cst.ok()) return _cst;                                                     \
  } while (0)
