// The last line of defence of every program's main(): whatever escapes its
// body (std::bad_alloc, a library's exception) ends the program with one
// line on stderr and exit status 1, instead of std::terminate.
#pragma once

#include <exception>
#include <iostream>

namespace sg {

template <class Body>
int guarded_main(const char* name, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::cerr << name << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace sg
