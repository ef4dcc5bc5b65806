// unique_ptr aliases for libnftnl and libmnl objects.
#pragma once

#include <libmnl/libmnl.h>
#include <libnftnl/batch.h>
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/object.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>

#include "common/raii/deleter.h"

namespace sg::nft {

using Table = CPtr<nftnl_table, nftnl_table_free>;
using Chain = CPtr<nftnl_chain, nftnl_chain_free>;
using Rule = CPtr<nftnl_rule, nftnl_rule_free>;
using Set = CPtr<nftnl_set, nftnl_set_free>;
using SetElem = CPtr<nftnl_set_elem, nftnl_set_elem_free>;
using Obj = CPtr<nftnl_obj, nftnl_obj_free>;
using Expr = CPtr<nftnl_expr, nftnl_expr_free>;
using Batch = CPtr<nftnl_batch, nftnl_batch_free>;
using UdataBuf = CPtr<nftnl_udata_buf, nftnl_udata_buf_free>;
using MnlSocket = CPtr<mnl_socket, mnl_socket_close>;

}  // namespace sg::nft
