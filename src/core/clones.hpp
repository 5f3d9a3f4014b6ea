// LSTMGRAD_CLONES: a function built as AVX-512, AVX2 and baseline clones, the dynamic loader
// picking the best one the CPU runs (target_clones; no -march=native needed).
//
// Empty under ThreadSanitizer: the clones' resolvers run while the loader relocates the program,
// before TSan's runtime is set up, and TSan's instrumentation of them crashes there. The baseline
// clone's code is what a TSan build runs.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define LSTMGRAD_CLONES
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LSTMGRAD_CLONES
#endif
#endif
#ifndef LSTMGRAD_CLONES
#define LSTMGRAD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
