// SIMD vector type shared by vmamba's CPU kernels: W float lanes (16 with AVX-512, 8 with AVX, 4
// otherwise, where the compiler maps the vector to whatever the target has: SSE2, NEON, SVE).
#pragma once
#include <cstdint>
#include <cstring>

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

}  // namespace vmamba_cpu
