/* Shared definitions of the farm reference engine: version, SIMD selection, fatal errors, clock. */
#ifndef FARM_COMMON_H
#define FARM_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define FARM_VERSION "0.1.0"

#ifndef FARM_BUILD_FLAGS
#define FARM_BUILD_FLAGS "unknown"
#endif

/* One SIMD path per build; FARM_SCALAR forces the portable C path so it stays tested. */
#if defined(FARM_SCALAR)
#define FARM_SIMD "scalar"
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FARM_AVX2 1
#define FARM_SIMD "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#define FARM_NEON 1
#define FARM_SIMD "neon"
#else
#define FARM_SIMD "scalar"
#endif

/* Bad input (file, flags, unsupported model): one line on stderr, exit code 2. */
void farm_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Raw CLOCK_MONOTONIC nanoseconds: the device clock power samplers align with. */
static inline int64_t farm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#endif
