// Small libnl-route helpers of the tunnel module: a connected route socket
// and the one alias common/raii/netlink.h does not have yet (rtnl_rule).
#pragma once

#include <netlink/route/rule.h>

#include <string>

#include "common/raii/netlink.h"
#include "common/result.h"

namespace sg::tunnel {

using NlRule = CPtr<rtnl_rule, rtnl_rule_put>;

// A NETLINK_ROUTE socket in the caller's network namespace.
Result<nl::Socket> route_socket();
// "what: <libnl's message>", with the errno libnl maps it to.
Error nl_error(const std::string& what, int nl_err);

}  // namespace sg::tunnel
