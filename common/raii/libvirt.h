// unique_ptr aliases for libvirt handles.
#pragma once

#include <libvirt/libvirt.h>

#include "common/raii/deleter.h"

namespace sg::virt {

using Connect = CPtr<virConnect, virConnectClose>;
using Domain = CPtr<virDomain, virDomainFree>;

}  // namespace sg::virt
