#pragma once

namespace sg {
inline constexpr const char* kVersion = "0.1.0";
}
