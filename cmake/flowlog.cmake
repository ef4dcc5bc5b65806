# Flow log, audit log and the conntrack / nflog listeners that feed them.
# Included from the top-level CMakeLists.txt after add_subdirectory(common)
# (it needs sg_common and the PkgConfig::MNL, PkgConfig::NFTNL,
# PkgConfig::SQLITE, OpenSSL::Crypto and nlohmann_json targets found there).
add_library(sg_flowlog STATIC
  ${PROJECT_SOURCE_DIR}/netpolicy/conntrack_listener.cc
  ${PROJECT_SOURCE_DIR}/netpolicy/conntrack_flush.cc
  ${PROJECT_SOURCE_DIR}/netpolicy/nflog_listener.cc
  ${PROJECT_SOURCE_DIR}/surrogated/flow_log.cc
  ${PROJECT_SOURCE_DIR}/surrogated/audit_log.cc)
# NFTNL: only for its headers, pulled in by common/raii/nftnl.h (home of the
# project's mnl_socket alias); nothing of libnftnl is linked in.
target_link_libraries(sg_flowlog PUBLIC
  sg_common PkgConfig::MNL PkgConfig::NFTNL PkgConfig::SQLITE OpenSSL::Crypto nlohmann_json::nlohmann_json)
