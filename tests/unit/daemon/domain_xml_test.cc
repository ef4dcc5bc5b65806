#include <gtest/gtest.h>
#include <libvirt/libvirt.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "surrogated/hypervisor.h"
#include "surrogated/libvirt_events.h"
#include "surrogated/vm_manager.h"

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

TEST(DomainXml, QemuTapCarriesBothGatewaysAndTheGuestHasNoNeedlessDevices) {
  std::string x = domain_xml(spec(), "qemu");
  EXPECT_NE(x.find("<ip address='2001:db8:5:1::1' family='ipv6' prefix='64'/>"), std::string::npos) << x;
  EXPECT_NE(x.find("<model type='virtio'/>"), std::string::npos);
  EXPECT_NE(x.find("<rom enabled='no'/>"), std::string::npos);
  EXPECT_NE(x.find("<on_poweroff>destroy</on_poweroff>"), std::string::npos);
  EXPECT_NE(x.find("<source path='/var/log/libvirt/surrogate-sg7.console.log'/>"), std::string::npos);
  EXPECT_NE(x.find("<controller type='usb' model='none'/>"), std::string::npos);
  EXPECT_NE(x.find("<memballoon model='none'/>"), std::string::npos);
  EXPECT_NE(x.find("<panic model='isa'/>"), std::string::npos);
}

TEST(DomainXml, XenIsPvhWithARoutedVif) {
  DomainSpec s = spec();
  s.tpl.disk = "/srv/base.qcow2";
  std::string x = domain_xml(s, "xen");
  EXPECT_NE(x.find("<domain type='xen'>"), std::string::npos);
  EXPECT_NE(x.find(">xenpvh</type>"), std::string::npos);
  EXPECT_NE(x.find("<target dev='sg7'/>"), std::string::npos);
  EXPECT_NE(x.find("<script path='vif-route'/>"), std::string::npos);
  EXPECT_NE(x.find("<target dev='xvda' bus='xen'/><readonly/>"), std::string::npos);
  EXPECT_EQ(x.find("<serial"), std::string::npos);
  EXPECT_EQ(x.find("<acpi/>"), std::string::npos);
}

// Every XML the daemon writes must pass libvirt's own schema (libvirt-clients
// ships virt-xml-validate and the schemas), Xen's too although no Xen host
// is at hand: a schema error would only show on a real Xen host.
TEST(DomainXml, ValidatesAgainstLibvirtsSchema) {
  if (access("/usr/bin/virt-xml-validate", X_OK) != 0) {
    GTEST_SKIP() << "virt-xml-validate is missing (apt-get install libvirt-clients; scripts/install-deps does)";
  }
  DomainSpec with_disk = spec();
  with_disk.tpl.disk = "/srv/base.qcow2";
  with_disk.tpl.kernel.clear();
  DomainSpec v4_only = spec();
  v4_only.addresses.v6_gateway.reset();
  v4_only.tpl.cpu_quota_percent = 0;
  int n = 0;
  for (const auto& hv : {"test", "qemu", "kvm", "xen"}) {
    for (const auto* s : {&with_disk, &v4_only}) {
      std::string path =
          ::testing::TempDir() + "/domain-" + std::to_string(getpid()) + "-" + std::to_string(n++) + ".xml";
      std::ofstream(path) << domain_xml(*s, hv);
      std::string cmd = "virt-xml-validate " + path + " domain 2>&1";
      std::string out;
      if (FILE* p = popen(cmd.c_str(), "r")) {
        char buf[512];
        while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
        EXPECT_EQ(pclose(p), 0) << hv << ":\n" << out << domain_xml(*s, hv);
      }
      (void)std::remove(path.c_str());
    }
  }
}

TEST(GuestCmdline, PlaceholdersAreFilledInPerVm) {
  AddressPool pool(*Prefix::parse("198.51.100.0/24"), *Prefix::parse("2001:db8:5::/56"), 64);
  VmRecord vm;
  vm.name = "sg7";
  auto values = cmdline_values(vm, pool.addresses(1));
  auto out =
      expand_cmdline("console=ttyS0 ip={ipv4}/30 gw={gateway4} ip6={ipv6} gw6={gateway6} mac={mac} n={vm}", values);
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(*out,
            "console=ttyS0 ip=198.51.100.6/30 gw=198.51.100.5 ip6=2001:db8:5:1::2 gw6=2001:db8:5:1::1 "
            "mac=52:54:00:00:00:01 n=sg7");
  // No IPv6 pool: the placeholder is empty, not an error.
  AddressPool v4pool(*Prefix::parse("198.51.100.0/24"), std::nullopt, 64);
  auto v4 = expand_cmdline("ip6={ipv6}", cmdline_values(vm, v4pool.addresses(1)));
  ASSERT_TRUE(v4);
  EXPECT_EQ(*v4, "ip6=");
}

TEST(GuestCmdline, TyposAreErrorsThatNameTheKnownValues) {
  auto bad = expand_cmdline("ip={ipv5}", cmdline_values(VmRecord{}, VmAddresses{}));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("{ipv5}"), std::string::npos);
  EXPECT_NE(bad.error().message.find("{gateway4}"), std::string::npos);
  EXPECT_FALSE(expand_cmdline("ip={ipv4", cmdline_values(VmRecord{}, VmAddresses{})));
  // The config parser refuses such a template at load time.
  auto cfg =
      parse_daemon_config("[pool]\nipv4 = \"198.51.100.0/24\"\n[templates.t]\ncmdline = \"ip={ip}\"\n", "x.toml");
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().message.find("x.toml:4:"), std::string::npos) << cfg.error().message;
}

TEST(LibvirtEvents, OnlyEventsThatEndTheGuestReleaseIt) {
  EXPECT_EQ(stop_reason(VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN), "guest powered off");
  EXPECT_EQ(stop_reason(VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_CRASHED), "guest crashed");
  EXPECT_EQ(stop_reason(VIR_DOMAIN_EVENT_CRASHED, VIR_DOMAIN_EVENT_CRASHED_PANICKED), "guest crashed");
  EXPECT_EQ(stop_reason(VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
            "domain destroyed outside surrogated");
  EXPECT_FALSE(stop_reason(VIR_DOMAIN_EVENT_STARTED, VIR_DOMAIN_EVENT_STARTED_BOOTED));
  EXPECT_FALSE(stop_reason(VIR_DOMAIN_EVENT_SHUTDOWN, VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED));  // STOPPED follows
  EXPECT_FALSE(stop_reason(VIR_DOMAIN_EVENT_SUSPENDED, 0));
}

TEST(DomainXml, HypervisorTypeFollowsUri) {
  EXPECT_EQ(hypervisor_type_for_uri("test:///default"), "test");
  EXPECT_EQ(hypervisor_type_for_uri("qemu:///system"), "qemu");
  EXPECT_EQ(hypervisor_type_for_uri("xen:///system"), "xen");
  EXPECT_EQ(hypervisor_type_for_uri("qemu:///system?socket=/tmp/x/libvirt-sock"), "qemu");
}

}  // namespace
}  // namespace sg
