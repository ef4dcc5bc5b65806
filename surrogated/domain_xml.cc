#include <string>

#include "surrogated/hypervisor.h"

namespace sg {
namespace {

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::string hypervisor_type_for_uri(const std::string& uri) {
  if (uri.rfind("test:", 0) == 0) return "test";
  if (uri.rfind("xen:", 0) == 0) return "xen";
  return "qemu";  // TCG; "kvm" where the host has hardware virtualisation
}

std::string domain_xml(const DomainSpec& spec, const std::string& hv_type) {
  const VmTemplate& t = spec.tpl;
  std::string x;
  x += "<domain type='" + hv_type + "'>\n";
  x += "  <name>" + escape(spec.domain) + "</name>\n";
  x += "  <metadata>\n";
  x += "    <sg:vm xmlns:sg='https://surrogated.invalid/xmlns/vm/1' id='" + std::to_string(spec.vm_id) + "' name='" +
       escape(spec.vm_name) + "' owner='" + escape(spec.owner_fp) + "'/>\n";
  x += "  </metadata>\n";
  x += "  <memory unit='MiB'>" + std::to_string(t.memory_mib) + "</memory>\n";
  x += "  <vcpu>" + std::to_string(t.vcpus) + "</vcpu>\n";
  if (t.cpu_quota_percent > 0 && hv_type != "test") {
    // period 100 ms; quota is the share of one CPU per vCPU period.
    x += "  <cputune><period>100000</period><quota>" + std::to_string(t.cpu_quota_percent * 1000) +
         "</quota></cputune>\n";
  }
  x += "  <os>\n";
  if (hv_type == "xen") {
    x += "    <type arch='x86_64' machine='xenpvh'>xenpvh</type>\n";
  } else {
    x += "    <type arch='x86_64'>hvm</type>\n";
  }
  if (!t.kernel.empty()) {
    x += "    <kernel>" + escape(t.kernel) + "</kernel>\n";
    if (!t.initrd.empty()) x += "    <initrd>" + escape(t.initrd) + "</initrd>\n";
    if (!t.cmdline.empty()) x += "    <cmdline>" + escape(t.cmdline) + "</cmdline>\n";
  }
  x += "  </os>\n";
  x += "  <features><acpi/></features>\n";
  x += "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n";
  x += "  <devices>\n";
  if (!t.disk.empty()) {
    x += "    <disk type='file' device='disk'><driver name='qemu' type='qcow2' snapshot='external'/>"
         "<source file='" +
         escape(t.disk) + "'/><target dev='vda' bus='virtio'/><readonly/></disk>\n";
  }
  const VmAddresses& a = spec.addresses;
  x += "    <interface type='ethernet'>\n";
  x += "      <mac address='" + a.mac + "'/>\n";
  x += "      <target dev='" + escape(spec.vm_name) + "' managed='" + (hv_type == "test" ? "no" : "yes") + "'/>\n";
  if (hv_type != "test") {
    // libvirt gives the host end of the tap the gateway address.
    if (a.v4_gateway) {
      x += "      <source><ip address='" + a.v4_gateway->to_string() + "' family='ipv4' prefix='30'/></source>\n";
    }
    x += "      <model type='virtio'/>\n      <rom enabled='no'/>\n";
  }
  x += "    </interface>\n";
  if (hv_type != "test") {
    x +=
        "    <serial type='file'><source path='/var/log/libvirt/" + escape(spec.vm_name) + ".console.log'/></serial>\n";
    x += "    <memballoon model='none'/>\n";
  }
  x += "  </devices>\n";
  x += "</domain>\n";
  return x;
}

}  // namespace sg
