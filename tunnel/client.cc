#include "tunnel/client.h"

#include <sstream>

#include "common/log.h"
#include "netpolicy/nft_backend.h"
#include "tunnel/gre.h"
#include "tunnel/routing.h"

namespace sg::tunnel {
namespace {

using netpolicy::Bytes;
using netpolicy::Field;
using netpolicy::Match;

Match match(Field f, Match::Op op, Bytes v) {
  Match m;
  m.fields = {f};
  m.op = op;
  m.value = std::move(v);
  return m;
}
Match nfproto(Family f) { return match(Field::nfproto, Match::Op::eq, netpolicy::u8_bytes(f == Family::v4 ? 2 : 10)); }
netpolicy::Statement drop() { return netpolicy::Verdict{netpolicy::Verdict::Kind::drop, ""}; }

}  // namespace

TunnelConfig client_endpoint_config(const ClientSetup& s) {
  TunnelConfig c;
  c.device = s.device_name();
  c.local = s.local;
  c.remote = s.host;
  c.key = s.key;
  c.mtu = s.mtu;
  c.inner_peers = s.vm_addresses;
  c.check_source = true;  // only the VM's own packets leave through the client
  return c;
}

netpolicy::Ruleset client_ruleset(const ClientSetup& s) {
  using netpolicy::BaseHook;
  using netpolicy::Chain;
  using netpolicy::Rule;
  const std::string dev = s.device_name();
  const Match from_tunnel = match(Field::iifname, Match::Op::eq, netpolicy::ifname_bytes(dev));
  Chain forward{"forward", BaseHook{BaseHook::Hook::forward, 0, false, false}, {}};
  Chain nat{"postrouting", BaseHook{BaseHook::Hook::postrouting, 100, false, true}, {}};
  for (Family f : {Family::v4, Family::v6}) {
    const Field saddr = f == Family::v4 ? Field::ip_saddr : Field::ip6_saddr;
    const char* fam = f == Family::v4 ? "IPv4" : "IPv6";
    std::optional<IpAddress> own;
    for (const auto& a : s.vm_addresses) {
      if (a.family == f) own = a;
    }
    if (!own) {
      forward.rules.push_back(Rule{
          {from_tunnel, nfproto(f)}, {netpolicy::Counter{}, drop()}, s.vm + ": the VM has no " + fam + " address"});
      continue;
    }
    forward.rules.push_back(
        Rule{{from_tunnel, nfproto(f), match(saddr, Match::Op::neq, netpolicy::address_bytes(*own))},
             {netpolicy::Counter{}, drop()},
             s.vm + ": only packets from the VM's own address " + own->to_string()});
    std::vector<Match> ms{nfproto(f), match(saddr, Match::Op::eq, netpolicy::address_bytes(*own))};
    if (!s.uplink.empty()) ms.push_back(match(Field::oifname, Match::Op::eq, netpolicy::ifname_bytes(s.uplink)));
    nat.rules.push_back(Rule{std::move(ms),
                             {netpolicy::Counter{}, netpolicy::Masquerade{}},
                             s.vm + ": the world sees this client's address"});
  }
  if (!s.uplink.empty()) {
    forward.rules.push_back(
        Rule{{from_tunnel, match(Field::oifname, Match::Op::neq, netpolicy::ifname_bytes(s.uplink))},
             {netpolicy::Counter{}, drop()},
             s.vm + ": out of the uplink " + s.uplink + " only"});
  }
  netpolicy::Table t;
  t.family = netpolicy::TableFamily::inet;
  t.name = s.table_name();
  t.chains = {forward, nat};
  return netpolicy::Ruleset{{t}};
}

std::string client_commands(const ClientSetup& s) {
  const std::string dev = s.device_name();
  const bool v4 = s.host.family == Family::v4;
  std::ostringstream o;
  o << "# client end of " << s.vm << "'s GRE tunnel to " << s.host.to_string() << " (kernel GRE)\n";
  o << "ip link add " << dev << " type " << (v4 ? "gre" : "ip6gre");
  if (s.local) o << " local " << s.local->to_string();
  o << " remote " << s.host.to_string();
  if (s.key) o << " key " << *s.key;
  o << " ttl 64\n";
  o << "ip link set " << dev << " mtu " << effective_mtu(client_endpoint_config(s)) << " up\n";
  for (const auto& a : s.vm_addresses) {
    o << "ip " << (a.family == Family::v4 ? "" : "-6 ") << "route add " << a.to_string() << "/" << a.bit_length()
      << " dev " << dev << "\n";
  }
  o << "sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv4.conf." << dev << ".rp_filter=2\n";
  o << "nft -f - <<'EOF'\n" << netpolicy::to_nft_text(client_ruleset(s)) << "EOF\n";
  o << "# to undo: ip link del " << dev << "; nft delete table inet " << s.table_name() << "\n";
  return o.str();
}

Result<std::unique_ptr<ClientTunnel>> ClientTunnel::open(const ClientSetup& s, EndpointKind kind) {
  if (s.vm_addresses.empty()) return make_error("the VM has no addresses to route into the tunnel");
  auto e = open_endpoint(kind, client_endpoint_config(s));
  if (!e) return e.error();
  std::unique_ptr<ClientTunnel> t(new ClientTunnel(s, std::move(*e)));
  const std::string dev = s.device_name();
  if (auto st = add_host_routes(dev, s.vm_addresses); !st) return st.error();
  for (const auto& [key, value] :
       {std::pair{"net/ipv4/ip_forward", "1"}, std::pair{"net/ipv6/conf/all/forwarding", "1"}}) {
    if (read_sysctl(key) != value) {
      if (auto st = write_sysctl(key, value); !st) return st.error();
      log::notice(std::string("enabled forwarding (") + key + ")");
    }
  }
  if (auto st = write_sysctl("net/ipv4/conf/" + dev + "/rp_filter", "2"); !st) return st.error();
  auto nft = netpolicy::NftBackend::open();
  if (!nft) return with_context("nftables", nft.error());
  if (auto st = nft->apply(netpolicy::plan_replace(client_ruleset(s))); !st) {
    return with_context("installing the masquerade table " + s.table_name(), st.error());
  }
  t->table_installed_ = true;
  return t;
}

ClientTunnel::~ClientTunnel() {
  if (table_installed_) {
    netpolicy::Plan p;
    netpolicy::Op del;
    del.kind = netpolicy::Op::Kind::delete_table;
    del.table = setup_.table_name();
    p.ops.push_back(del);
    auto nft = netpolicy::NftBackend::open();
    if (!nft || !nft->apply(p)) log::error("could not remove nftables table " + setup_.table_name());
  }
  endpoint_.reset();  // the device, and with it its routes
}

}  // namespace sg::tunnel
