// unique_ptr aliases for libnl-3 / libnl-route-3 objects.
#pragma once

#include <netlink/addr.h>
#include <netlink/cache.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/class.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/route.h>
#include <netlink/socket.h>

#include "common/raii/deleter.h"

namespace sg::nl {

using Socket = CPtr<nl_sock, nl_socket_free>;
using Link = CPtr<rtnl_link, rtnl_link_put>;
using Addr = CPtr<rtnl_addr, rtnl_addr_put>;
using Route = CPtr<rtnl_route, rtnl_route_put>;
using NlAddr = CPtr<nl_addr, nl_addr_put>;
using Qdisc = CPtr<rtnl_qdisc, rtnl_qdisc_put>;
using Class = CPtr<rtnl_class, rtnl_class_put>;
using Cache = CPtr<nl_cache, nl_cache_free>;

}  // namespace sg::nl
