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
  const bool simulated = hv_type == "test";
  const bool xen = hv_type == "xen";
  std::string x;
  x += "<domain type='" + hv_type + "'>\n";
  x += "  <name>" + escape(spec.domain) + "</name>\n";
  x += "  <metadata>\n";
  x += "    <sg:vm xmlns:sg='https://surrogated.invalid/xmlns/vm/1' id='" + std::to_string(spec.vm_id) + "' name='" +
       escape(spec.vm_name) + "' owner='" + escape(spec.owner_fp) + "'/>\n";
  x += "  </metadata>\n";
  x += "  <memory unit='MiB'>" + std::to_string(t.memory_mib) + "</memory>\n";
  x += "  <vcpu>" + std::to_string(t.vcpus) + "</vcpu>\n";
  if (t.cpu_quota_percent > 0 && !simulated) {
    // period 100 ms; quota is the share of one CPU per vCPU period.
    x += "  <cputune><period>100000</period><quota>" + std::to_string(t.cpu_quota_percent * 1000) +
         "</quota></cputune>\n";
  }
  x += "  <os>\n";
  if (xen) {
    // PVH: paravirtualised boot of a plain kernel, no emulated firmware.
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
  // ACPI: without it a guest's "poweroff" only halts the CPU and the domain
  // stays running (REAL-VM.md); Xen PVH guests power off through Xen.
  if (!xen) x += "  <features><acpi/></features>\n";
  // A guest that ends for any reason is gone; the daemon releases it.
  x += "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n";
  x += "  <devices>\n";
  if (!t.disk.empty()) {
    // The base image is shared by every VM of the template: QEMU writes the
    // guest's changes to a throw-away overlay (transient); Xen has no such
    // disk, so there the guest gets it read-only.
    x +=
        "    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='" + escape(t.disk) + "'/>";
    x += xen ? "<target dev='xvda' bus='xen'/><readonly/>" : "<target dev='vda' bus='virtio'/><transient/>";
    x += "</disk>\n";
  }
  const VmAddresses& a = spec.addresses;
  x += "    <interface type='ethernet'>\n";
  x += "      <mac address='" + a.mac + "'/>\n";
  if (simulated) {
    x += "      <target dev='" + escape(spec.vm_name) + "' managed='no'/>\n";
  } else if (xen) {
    // libxl names the backend vif after the target; the guest's own address
    // goes to the routing hook script.
    if (a.v4_guest) x += "      <ip address='" + a.v4_guest->to_string() + "' family='ipv4' prefix='32'/>\n";
    x += "      <script path='vif-route'/>\n";
    x += "      <target dev='" + escape(spec.vm_name) + "'/>\n";
    x += "      <model type='netfront'/>\n";
  } else {
    // A tap libvirt creates and deletes with the domain, carrying the
    // gateway addresses of the point-to-point link (the host end).
    x += "      <target dev='" + escape(spec.vm_name) + "' managed='yes'/>\n";
    if (a.v4_gateway || a.v6_gateway) {
      x += "      <source>";
      if (a.v4_gateway) x += "<ip address='" + a.v4_gateway->to_string() + "' family='ipv4' prefix='30'/>";
      if (a.v6_gateway) x += "<ip address='" + a.v6_gateway->to_string() + "' family='ipv6' prefix='64'/>";
      x += "</source>\n";
    }
    x += "      <model type='virtio'/>\n      <rom enabled='no'/>\n";
  }
  x += "    </interface>\n";
  if (xen) {
    x += "    <console type='pty'><target type='xen' port='0'/></console>\n";
  } else if (!simulated) {
    // The serial console goes to a file (the admin's record of what the
    // guest printed); no USB, no balloon: nothing the guest does not need.
    x += "    <serial type='file'><source path='/var/log/libvirt/" + escape(spec.domain) + ".console.log'/></serial>\n";
    x += "    <controller type='usb' model='none'/>\n";
    x += "    <memballoon model='none'/>\n";
    // pvpanic: a guest kernel panic is reported as a crash, not a hang.
    x += "    <panic model='isa'/>\n";
  }
  x += "  </devices>\n";
  x += "</domain>\n";
  return x;
}

}  // namespace sg
