#include <gtest/gtest.h>

#include "surrogated/hypervisor.h"

namespace sg {
namespace {

DomainSpec spec() {
  AddressPool pool(*Prefix::parse("198.51.100.0/24"), *Prefix::parse("2001:db8:5::/56"), 64);
  VmTemplate t;
  t.name = "small";
  t.vcpus = 2;
  t.memory_mib = 192;
  t.kernel = "/srv/vmlinux";
  t.initrd = "/srv/initrd.gz";
  t.cmdline = "console=ttyS0 check=<ping>";
  t.cpu_quota_percent = 50;
  return DomainSpec{"surrogate-sg7", "sg7", 7, "sha256:ab", t, pool.addresses(1)};
}

TEST(DomainXml, TestDriverHasUnmanagedTapAndNoDevicesItCannotSimulate) {
  std::string x = domain_xml(spec(), "test");
  EXPECT_NE(x.find("<domain type='test'>"), std::string::npos);
  EXPECT_NE(x.find("<name>surrogate-sg7</name>"), std::string::npos);
  EXPECT_NE(x.find("<target dev='sg7' managed='no'/>"), std::string::npos);
  EXPECT_NE(x.find("<mac address='52:54:00:00:00:01'/>"), std::string::npos);
  EXPECT_EQ(x.find("<cputune>"), std::string::npos);
  EXPECT_EQ(x.find("<serial"), std::string::npos);
}

TEST(DomainXml, QemuGetsGatewayOnTapDirectBootAndCpuQuota) {
  std::string x = domain_xml(spec(), "qemu");
  EXPECT_NE(x.find("<domain type='qemu'>"), std::string::npos);
  EXPECT_NE(x.find("<target dev='sg7' managed='yes'/>"), std::string::npos);
  EXPECT_NE(x.find("<ip address='198.51.100.5' family='ipv4' prefix='30'/>"), std::string::npos);
  EXPECT_NE(x.find("<kernel>/srv/vmlinux</kernel>"), std::string::npos);
  EXPECT_NE(x.find("<cmdline>console=ttyS0 check=&lt;ping&gt;</cmdline>"), std::string::npos);
  EXPECT_NE(x.find("<quota>50000</quota>"), std::string::npos);
  EXPECT_NE(x.find("<features><acpi/></features>"), std::string::npos);
  EXPECT_NE(x.find("id='7'"), std::string::npos);
}

TEST(DomainXml, HypervisorTypeFollowsUri) {
  EXPECT_EQ(hypervisor_type_for_uri("test:///default"), "test");
  EXPECT_EQ(hypervisor_type_for_uri("qemu:///system"), "qemu");
  EXPECT_EQ(hypervisor_type_for_uri("xen:///system"), "xen");
}

}  // namespace
}  // namespace sg
