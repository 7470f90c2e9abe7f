// SIMD vector type shared by vmamba's CPU kernels: W float lanes (16 with AVX-512, 8 with AVX, 4
// otherwise, where the compiler maps the vector to whatever the target has: SSE2, NEON, SVE).
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace vmamba_cpu {

#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif

typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

static inline vf vset(float s) { return vf{} + s; }
static inline vf loadu(const float* p) { vf v; std::memcpy(&v, p, sizeof(vf)); return v; }
static inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }

// The sum of a vector's lanes.
static inline float lane_sum(vf v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#elif defined(__AVX__)
  const __m128 a = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
  const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
#else
  float s = 0.0f;
  for (int w = 0; w < W; ++w) s += v[w];
  return s;
#endif
}

}  // namespace vmamba_cpu
