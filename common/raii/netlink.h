// unique_ptr aliases for libnl-3 / libnl-route-3 objects.
#pragma once

#include <netlink/addr.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/route.h>
#include <netlink/socket.h>

#include "common/raii/deleter.h"

namespace sg::nl {

using Socket = CPtr<nl_sock, nl_socket_free>;
using Link = CPtr<rtnl_link, rtnl_link_put>;
using Addr = CPtr<rtnl_addr, rtnl_addr_put>;
using Route = CPtr<rtnl_route, rtnl_route_put>;
using NlAddr = CPtr<nl_addr, nl_addr_put>;

}  // namespace sg::nl
