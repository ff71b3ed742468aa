// Row-major GEMM on the CPU through OpenBLAS: C = alpha * op(A) * op(B) + beta * C.
// op(A) is (M,K), op(B) is (K,N), C is (M,N); lda/ldb/ldc are row strides, so strided views
// (for example one head inside a (B,T,3C) QKV tensor) need no copies.
#pragma once

namespace ringtrain::cpu {

void Gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc);
void Gemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* a, int lda,
          const double* b, int ldb, double beta, double* c, int ldc);

}  // namespace ringtrain::cpu
