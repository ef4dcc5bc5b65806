// One error type for everything below main(): Result<T> holds either a value
// or an Error whose message says what went wrong and what to do next.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace sg {

struct Error {
  std::string message;
  int sys_errno = 0;  // errno of the failing call, 0 when not a system error

  // The message, with strerror() appended for system errors.
  [[nodiscard]] std::string describe() const {
    if (sys_errno == 0) return message;
    return message + ": " + std::strerror(sys_errno);
  }
};

inline Error make_error(std::string message) { return Error{std::move(message), 0}; }
// For failures of a system call: captures errno at the call site.
inline Error make_sys_error(std::string message, int err = errno) { return Error{std::move(message), err}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  [[nodiscard]] const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  [[nodiscard]] const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Result<void>;

// Adds context in front of an error message: "loading state: <cause>".
inline Error with_context(const std::string& context, const Error& cause) {
  return Error{context + ": " + cause.message, cause.sys_errno};
}

}  // namespace sg
