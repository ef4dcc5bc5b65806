// A stateless deleter for any C "free" function, so every C object is owned
// by a std::unique_ptr and no exit path needs hand-written cleanup.
#pragma once

#include <memory>

namespace sg {

template <auto FreeFn>
struct CDeleter {
  template <class T>
  void operator()(T* p) const {
    if (p != nullptr) FreeFn(p);
  }
};

template <class T, auto FreeFn>
using CPtr = std::unique_ptr<T, CDeleter<FreeFn>>;

}  // namespace sg
