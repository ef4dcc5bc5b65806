// unique_ptr aliases for SQLite handles.
#pragma once

#include <sqlite3.h>

#include "common/raii/deleter.h"

namespace sg::sql {

using Db = CPtr<sqlite3, sqlite3_close_v2>;
using Stmt = CPtr<sqlite3_stmt, sqlite3_finalize>;

}  // namespace sg::sql
