// Whether this build runs under a sanitizer that changes what a test can do (TSan: no threads
// after a multi-threaded fork, and slower runs).
#pragma once

namespace lstmgrad::test {

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
#else
inline constexpr bool kThreadSanitizer = false;
#endif

}  // namespace lstmgrad::test
