#include "netpolicy/ruleset.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "netpolicy/tc_plan.h"

namespace sg::netpolicy {

Bytes prefix_mask(std::size_t len, int prefix_len) {
  Bytes m(len, 0);
  for (int bit = 0; bit < prefix_len && bit < static_cast<int>(len * 8); ++bit) {
    m[static_cast<std::size_t>(bit / 8)] |= static_cast<std::uint8_t>(0x80U >> static_cast<unsigned>(bit % 8));
  }
  return m;
}

Bytes ifname_bytes(const std::string& name) {
  Bytes b(16, 0);
  // IFNAMSIZ includes the terminating zero, so at most 15 characters fit.
  std::memcpy(b.data(), name.data(), std::min<std::size_t>(name.size(), 15));
  return b;
}

Bytes u8_bytes(std::uint8_t v) { return {v}; }

Bytes be16_bytes(std::uint16_t v) { return {static_cast<std::uint8_t>(v >> 8U), static_cast<std::uint8_t>(v & 0xffU)}; }

Bytes be32_bytes(std::uint32_t v) {
  return {static_cast<std::uint8_t>(v >> 24U), static_cast<std::uint8_t>((v >> 16U) & 0xffU),
          static_cast<std::uint8_t>((v >> 8U) & 0xffU), static_cast<std::uint8_t>(v & 0xffU)};
}

Bytes host32_bytes(std::uint32_t v) {
  Bytes b(4);
  std::memcpy(b.data(), &v, 4);
  return b;
}

Bytes address_bytes(const IpAddress& a) { return Bytes(a.bytes.begin(), a.bytes.begin() + a.byte_length()); }

Bytes mac_bytes(const std::string& mac) {
  unsigned v[6];
  char tail = 0;
  if (std::sscanf(mac.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6) {
    return {};  // callers validate MACs before compiling; an empty value fails in the backend
  }
  Bytes b(6);
  for (int i = 0; i < 6; ++i) b[i] = static_cast<std::uint8_t>(v[i]);
  return b;
}

namespace {

std::uint64_t be_uint(const Bytes& b) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < b.size() && i < 8; ++i) v = (v << 8U) | b[i];
  return v;
}

std::uint32_t host_u32(const Bytes& b) {
  std::uint32_t v = 0;
  std::memcpy(&v, b.data(), std::min<std::size_t>(b.size(), 4));
  return v;
}

std::string hex_bytes(const Bytes& b) {
  std::string s = "0x";
  char buf[3];
  for (auto byte : b) {
    (void)std::snprintf(buf, sizeof buf, "%02x", byte);
    s += buf;
  }
  return s;
}

std::string format_mac_bytes(const Bytes& b) {
  std::string s;
  char buf[4];
  for (std::size_t i = 0; i < b.size(); ++i) {
    (void)std::snprintf(buf, sizeof buf, i == 0 ? "%02x" : ":%02x", b[i]);
    s += buf;
  }
  return s;
}

std::string format_address(const Bytes& b) {
  IpAddress a;
  a.family = b.size() == 16 ? Family::v6 : Family::v4;
  std::memcpy(a.bytes.data(), b.data(), std::min<std::size_t>(b.size(), 16));
  return a.to_string();
}

// nft refuses quotes inside strings and limits comments and log prefixes to
// 127 bytes (128 with the terminating zero): keep the text loadable.
std::string nft_string(std::string s, std::size_t max_bytes) {
  for (auto& c : s) {
    if (c == '"' || c == '\n' || c == '\\') c = '\'';
  }
  if (s.size() > max_bytes) {
    s.resize(max_bytes);
    // Do not leave half a UTF-8 sequence at the end.
    while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xC0U) == 0x80U) s.pop_back();
    if (!s.empty() && (static_cast<unsigned char>(s.back()) & 0x80U) != 0) s.pop_back();
  }
  return s;
}

std::string quoted_ifname(const Bytes& b, int prefix_bits = -1) {
  std::string name;
  std::size_t n = prefix_bits >= 0 ? static_cast<std::size_t>(prefix_bits / 8) : b.size();
  for (std::size_t i = 0; i < n && i < b.size() && b[i] != 0; ++i) name += static_cast<char>(b[i]);
  if (prefix_bits >= 0) name += '*';
  return "\"" + name + "\"";
}

std::string proto_name(unsigned p) {
  switch (p) {
    case 1: return "icmp";
    case 2: return "igmp";
    case 6: return "tcp";
    case 17: return "udp";
    case 47: return "gre";
    case 50: return "esp";
    case 51: return "ah";
    case 58: return "ipv6-icmp";
    case 132: return "sctp";
    case 136: return "udplite";
    default: return std::to_string(p);
  }
}

std::string nfproto_name(unsigned p) {
  if (p == 2) return "ipv4";
  if (p == 10) return "ipv6";
  return std::to_string(p);
}

std::string icmp_type_name(unsigned t) {
  switch (t) {
    case 0: return "echo-reply";
    case 3: return "destination-unreachable";
    case 4: return "source-quench";
    case 5: return "redirect";
    case 8: return "echo-request";
    case 9: return "router-advertisement";
    case 10: return "router-solicitation";
    case 11: return "time-exceeded";
    case 12: return "parameter-problem";
    case 13: return "timestamp-request";
    case 14: return "timestamp-reply";
    case 15: return "info-request";
    case 16: return "info-reply";
    case 17: return "address-mask-request";
    case 18: return "address-mask-reply";
    default: return std::to_string(t);
  }
}

std::string icmpv6_type_name(unsigned t) {
  switch (t) {
    case 1: return "destination-unreachable";
    case 2: return "packet-too-big";
    case 3: return "time-exceeded";
    case 4: return "parameter-problem";
    case 128: return "echo-request";
    case 129: return "echo-reply";
    case 130: return "mld-listener-query";
    case 131: return "mld-listener-report";
    case 133: return "nd-router-solicit";
    case 134: return "nd-router-advert";
    case 135: return "nd-neighbor-solicit";
    case 136: return "nd-neighbor-advert";
    case 137: return "nd-redirect";
    case 143: return "mld2-listener-report";
    default: return std::to_string(t);
  }
}

std::string flag_names(std::uint32_t bits, const std::vector<std::pair<std::uint32_t, const char*>>& names) {
  std::string s;
  for (const auto& [bit, name] : names) {
    if ((bits & bit) == 0) continue;
    if (!s.empty()) s += ",";
    s += name;
    bits &= ~bit;
  }
  if (bits != 0 || s.empty()) {
    if (!s.empty()) s += ",";
    s += std::to_string(bits);
  }
  return s;
}

const std::vector<std::pair<std::uint32_t, const char*>>& ct_state_names() {
  static const std::vector<std::pair<std::uint32_t, const char*>> names = {{kCtInvalid, "invalid"},
                                                                           {kCtEstablished, "established"},
                                                                           {kCtRelated, "related"},
                                                                           {kCtNew, "new"},
                                                                           {kCtUntracked, "untracked"}};
  return names;
}

const std::vector<std::pair<std::uint32_t, const char*>>& tcp_flag_names() {
  static const std::vector<std::pair<std::uint32_t, const char*>> names = {
      {kTcpFin, "fin"}, {kTcpSyn, "syn"}, {kTcpRst, "rst"}, {0x08, "psh"},
      {kTcpAck, "ack"}, {0x20, "urg"},    {0x40, "ecn"},    {0x80, "cwr"}};
  return names;
}

std::string selector(Field f) {
  switch (f) {
    case Field::iifname: return "iifname";
    case Field::oifname: return "oifname";
    case Field::nfproto: return "meta nfproto";
    case Field::l4proto: return "meta l4proto";
    case Field::ether_saddr: return "ether saddr";
    case Field::ip_saddr: return "ip saddr";
    case Field::ip_daddr: return "ip daddr";
    case Field::ip6_saddr: return "ip6 saddr";
    case Field::ip6_daddr: return "ip6 daddr";
    case Field::ip_hdrlength: return "ip hdrlength";
    case Field::ip_frag_off: return "ip frag-off & 0x1fff";
    case Field::th_dport: return "th dport";
    case Field::tcp_flags: return "tcp flags";
    case Field::icmp_type: return "icmp type";
    case Field::icmpv6_type: return "icmpv6 type";
    case Field::icmpv6_nd_target: return "@th,64,128";
    case Field::nh_first_byte: return "@nh,0,8";
    case Field::ct_state: return "ct state";
    case Field::ct_mark: return "ct mark";
    case Field::ct_direction: return "ct direction";
    case Field::arp_sip: return "arp saddr ip";
    case Field::arp_sha: return "arp saddr ether";
    case Field::ip6_exthdr_routing: return "exthdr rt";
    case Field::ip6_exthdr_fragment: return "exthdr frag";
    case Field::meta_mark: return "meta mark";
  }
  return "?";
}

// One value of a field in the field's own notation.
std::string value_text(Field f, const Bytes& v) {
  if (v.empty()) return "<empty>";
  switch (f) {
    case Field::iifname:
    case Field::oifname: return quoted_ifname(v);
    case Field::nfproto: return nfproto_name(v[0]);
    case Field::l4proto: return proto_name(v[0]);
    case Field::ether_saddr:
    case Field::arp_sha: return format_mac_bytes(v);
    case Field::ip_saddr:
    case Field::ip_daddr:
    case Field::ip6_saddr:
    case Field::ip6_daddr:
    case Field::arp_sip: return format_address(v);
    case Field::ip_hdrlength:
    case Field::ip_frag_off:
    case Field::th_dport: return std::to_string(be_uint(v));
    case Field::tcp_flags: return flag_names(v[0], tcp_flag_names());
    case Field::icmp_type: return icmp_type_name(v[0]);
    case Field::icmpv6_type: return icmpv6_type_name(v[0]);
    case Field::icmpv6_nd_target:
    case Field::nh_first_byte: return hex_bytes(v);
    case Field::ct_state: return flag_names(host_u32(v), ct_state_names());
    case Field::ct_direction: return v[0] == 0 ? "original" : "reply";
    case Field::ct_mark:
    case Field::meta_mark: {
      char buf[16];
      (void)std::snprintf(buf, sizeof buf, "0x%08x", host_u32(v));
      return buf;
    }
    case Field::ip6_exthdr_routing:
    case Field::ip6_exthdr_fragment: return v[0] != 0 ? "exists" : "missing";
  }
  return hex_bytes(v);
}

// tcp flags masks print as "(syn|ack)" the way nft parses them.
std::string tcp_mask_text(std::uint8_t mask) {
  std::string names = flag_names(mask, tcp_flag_names());
  std::string s;
  int count = 0;
  for (char c : names) {
    if (c == ',') {
      s += '|';
      ++count;
    } else {
      s += c;
    }
  }
  return count > 0 ? "(" + s + ")" : s;
}

// `iifname . (ip daddr & 255.255.255.0) . th dport`: a masked field is
// parenthesized (nft 1.0.6 needs that to parse it back).
std::string concat_selector(const std::vector<Field>& fields, const std::vector<int>& prefix_lens = {}) {
  std::string s;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) s += " . ";
    const int bits = i < prefix_lens.size() ? prefix_lens[i] : 0;
    const bool v4 = fields[i] == Field::ip_saddr || fields[i] == Field::ip_daddr;
    const bool v6 = fields[i] == Field::ip6_saddr || fields[i] == Field::ip6_daddr;
    if (bits > 0 && ((v4 && bits < 32) || (v6 && bits < 128))) {
      s += "(" + selector(fields[i]) + " & " + format_address(prefix_mask(v6 ? 16 : 4, bits)) + ")";
    } else {
      s += selector(fields[i]);
    }
  }
  return s;
}

std::string match_text(const Match& m) {
  if (m.fields.empty()) return "<no field>";
  const Field f = m.fields.front();
  const std::string sel = concat_selector(m.fields, m.key_prefix_lens);
  switch (m.op) {
    case Match::Op::eq:
      if (f == Field::ip6_exthdr_routing || f == Field::ip6_exthdr_fragment) return sel + " " + value_text(f, m.value);
      // Bitmask fields compare with an implicit "any bit" unless told otherwise.
      if (f == Field::tcp_flags || f == Field::ct_state || f == Field::ip_frag_off) {
        return sel + " == " + value_text(f, m.value);
      }
      return sel + " " + value_text(f, m.value);
    case Match::Op::neq:
      if (f == Field::ip6_exthdr_routing || f == Field::ip6_exthdr_fragment) {
        return sel + " " + value_text(f, Bytes{static_cast<std::uint8_t>(m.value.empty() || m.value[0] == 0 ? 1 : 0)});
      }
      return sel + " != " + value_text(f, m.value);
    case Match::Op::prefix:
    case Match::Op::not_prefix: {
      const std::string neg = m.op == Match::Op::not_prefix ? "!= " : "";
      if (f == Field::iifname || f == Field::oifname) return sel + " " + neg + quoted_ifname(m.value, m.prefix_len);
      return sel + " " + neg + value_text(f, m.value) + "/" + std::to_string(m.prefix_len);
    }
    case Match::Op::range: return sel + " " + value_text(f, m.value) + "-" + value_text(f, m.value_hi);
    case Match::Op::in_set: return sel + " @" + m.set;
    case Match::Op::not_in_set: return sel + " != @" + m.set;
    case Match::Op::any_bits: return sel + " " + value_text(f, m.value);
    case Match::Op::masked_eq: {
      if (f == Field::tcp_flags && !m.mask.empty()) {
        const std::string value = m.value.empty() || m.value[0] == 0 ? "0" : value_text(f, m.value);
        return sel + " & " + tcp_mask_text(m.mask[0]) + " == " + value;
      }
      if (f == Field::ct_state) {
        return sel + " & (" + value_text(f, m.mask) + ") == " + value_text(f, m.value);
      }
      // ct mark is a host-order integer: print it as nft reads it.
      if (f == Field::ct_mark) return sel + " & " + value_text(f, m.mask) + " == " + value_text(f, m.value);
      return sel + " & " + hex_bytes(m.mask) + " == " + hex_bytes(m.value);
    }
    case Match::Op::vmap: return sel + " vmap @" + m.set;
  }
  return "?";
}

std::string limit_text(const Limit& l) {
  std::string s = "limit rate ";
  if (l.over) s += "over ";
  if (l.bytes) {
    s += std::to_string(l.rate) + " bytes/second";
    if (l.burst != 0) s += " burst " + std::to_string(l.burst) + " bytes";
  } else {
    s += std::to_string(l.rate) + "/second";
    if (l.burst != 0) s += " burst " + std::to_string(l.burst) + " packets";
  }
  return s;
}

std::string verdict_text(const Verdict& v) {
  switch (v.kind) {
    case Verdict::Kind::accept: return "accept";
    case Verdict::Kind::drop: return "drop";
    case Verdict::Kind::jump: return "jump " + v.chain;
    case Verdict::Kind::go_to: return "goto " + v.chain;
    case Verdict::Kind::ret: return "return";
  }
  return "?";
}

std::string meter_key_text(const MeterUpdate& u) {
  std::string s = (u.by_iifname ? "iifname . " : "") + selector(u.key);
  const bool v6 = u.key == Field::ip6_saddr || u.key == Field::ip6_daddr;
  const bool v4 = u.key == Field::ip_saddr || u.key == Field::ip_daddr || u.key == Field::arp_sip;
  const int bits = v6 ? 128 : 32;
  if ((v4 || v6) && u.key_prefix_len > 0 && u.key_prefix_len < bits) {
    s += " & " + format_address(prefix_mask(v6 ? 16 : 4, u.key_prefix_len));
  }
  return s;
}

struct StatementText {
  std::string operator()(const Counter&) const { return "counter"; }
  std::string operator()(const Log& l) const {
    std::string s = "log group " + std::to_string(l.group);
    if (!l.prefix.empty()) s += " prefix \"" + nft_string(l.prefix, 127) + "\"";
    return s;
  }
  std::string operator()(const Limit& l) const { return limit_text(l); }
  std::string operator()(const QuotaRef& q) const { return "quota name \"" + q.name + "\""; }
  std::string operator()(const CtMarkSet& c) const {
    char buf[32];
    (void)std::snprintf(buf, sizeof buf, "ct mark set 0x%08x", c.mark);
    return buf;
  }
  std::string operator()(const PrioritySet& p) const {
    char buf[48];
    (void)std::snprintf(buf, sizeof buf, "meta priority set %x:%x", p.priority >> 16U, p.priority & 0xffffU);
    return buf;
  }
  std::string operator()(const MeterUpdate& u) const {
    return "update @" + u.set + " { " + meter_key_text(u) + " " + limit_text(u.limit) + " }";
  }
  std::string operator()(const Verdict& v) const { return verdict_text(v); }
  std::string operator()(const MarkSet& m) const {
    char buf[32];
    (void)std::snprintf(buf, sizeof buf, "meta mark set 0x%08x", m.mark);
    return buf;
  }
  std::string operator()(const MssSet& m) const { return "tcp option maxseg size set " + std::to_string(m.mss); }
  std::string operator()(const Masquerade&) const { return "masquerade"; }
  std::string operator()(const PriorityMap& p) const {
    return "meta priority set " + concat_selector(p.fields, p.key_prefix_lens) + " map @" + p.map;
  }
  std::string operator()(const CtMarkMap& c) const {
    return "ct mark set " + concat_selector(c.fields) + " map @" + c.map;
  }
  std::string operator()(const CtMarkOr& c) const {
    char buf[48];
    (void)std::snprintf(buf, sizeof buf, "ct mark set ct mark | 0x%08x", c.bits);
    return buf;
  }
  std::string operator()(const QuotaMap& q) const {
    return "quota name " + concat_selector(q.fields) + " map @" + q.map;
  }
  std::string operator()(const CountUpdate& u) const {
    return "update @" + u.set + " { " + selector(u.key) + " . \"" + nft_string(u.tag, 15) + "\" counter }";
  }
};

const char* key_type_name(KeyType k) {
  switch (k) {
    case KeyType::ipv4_addr: return "ipv4_addr";
    case KeyType::ipv6_addr: return "ipv6_addr";
    case KeyType::inet_proto: return "inet_proto";
    case KeyType::inet_service: return "inet_service";
    case KeyType::ifname: return "ifname";
    case KeyType::ether_addr: return "ether_addr";
    case KeyType::classid: return "classid";
    case KeyType::mark: return "mark";
    case KeyType::nd_target: return "integer";
    case KeyType::ct_state: return "ct_state";
    case KeyType::ct_dir: return "ct_dir";
  }
  return "?";
}

// A map's value: a tc class as nft prints it ("53:2a").
std::string data_text(KeyType k, const Bytes& v) {
  if (k == KeyType::classid && v.size() == 4) {
    std::uint32_t x = 0;
    std::memcpy(&x, v.data(), 4);
    return tc_handle_text(x);
  }
  if (k == KeyType::mark) return value_text(Field::meta_mark, v);
  return hex_bytes(v);
}

Field key_field(KeyType k) {
  switch (k) {
    case KeyType::ipv4_addr: return Field::ip_daddr;
    case KeyType::ipv6_addr: return Field::ip6_daddr;
    case KeyType::inet_proto: return Field::l4proto;
    case KeyType::inet_service: return Field::th_dport;
    case KeyType::ifname: return Field::iifname;
    case KeyType::ether_addr: return Field::ether_saddr;
    case KeyType::classid:
    case KeyType::mark: return Field::meta_mark;
    case KeyType::nd_target: return Field::icmpv6_nd_target;
    case KeyType::ct_state: return Field::ct_state;
    case KeyType::ct_dir: return Field::ct_direction;
  }
  return Field::ip_daddr;
}

// A set element part: a value, an address prefix, or a range.
std::string part_text(KeyType k, const SetElement::Part& p) {
  const Field f = key_field(k);
  if (p.value_hi.empty() || p.value_hi == p.value) return value_text(f, p.value);
  if ((k == KeyType::ipv4_addr || k == KeyType::ipv6_addr) && p.value.size() == p.value_hi.size()) {
    // Print lo-hi as a prefix when it is one, the way nft lists it.
    const int bits = static_cast<int>(p.value.size() * 8);
    int len = bits;
    while (len > 0) {
      const int bit = len - 1;
      const auto byte = static_cast<std::size_t>(bit / 8);
      const auto mask = static_cast<std::uint8_t>(0x80U >> static_cast<unsigned>(bit % 8));
      if ((p.value[byte] & mask) == 0 && (p.value_hi[byte] & mask) != 0) {
        --len;
      } else {
        break;
      }
    }
    bool is_prefix = len < bits;
    for (int bit = 0; bit < len && is_prefix; ++bit) {
      const auto byte = static_cast<std::size_t>(bit / 8);
      const auto mask = static_cast<std::uint8_t>(0x80U >> static_cast<unsigned>(bit % 8));
      if ((p.value[byte] & mask) != (p.value_hi[byte] & mask)) is_prefix = false;
    }
    if (is_prefix) return value_text(f, p.value) + "/" + std::to_string(len);
  }
  return value_text(f, p.value) + "-" + value_text(f, p.value_hi);
}

std::string duration_text(std::uint64_t ms) {
  std::string s;
  const std::uint64_t units[] = {86400000, 3600000, 60000, 1000, 1};
  const char* names[] = {"d", "h", "m", "s", "ms"};
  for (int i = 0; i < 5; ++i) {
    if (ms >= units[i]) {
      s += std::to_string(ms / units[i]) + names[i];
      ms %= units[i];
    }
  }
  return s.empty() ? "0s" : s;
}

std::string element_text(const std::vector<KeyType>& key, const SetElement& e,
                         std::optional<KeyType> data_type = std::nullopt) {
  std::string s;
  for (std::size_t i = 0; i < e.key.size(); ++i) {
    if (i > 0) s += " . ";
    s += i < key.size() ? part_text(key[i], e.key[i]) : hex_bytes(e.key[i].value);
  }
  if (e.timeout_ms) s += " timeout " + duration_text(*e.timeout_ms);
  if (!e.comment.empty()) s += " comment \"" + nft_string(e.comment, 127) + "\"";
  if (!e.verdict_chain.empty()) s += " : goto " + e.verdict_chain;
  if (!e.data.empty()) s += " : " + data_text(data_type.value_or(KeyType::classid), e.data);
  if (!e.object.empty()) s += " : \"" + nft_string(e.object, 63) + "\"";
  return s;
}

std::string elements_text(const std::vector<KeyType>& key, const std::vector<SetElement>& elements,
                          std::optional<KeyType> data_type = std::nullopt) {
  std::string s = "{ ";
  for (std::size_t i = 0; i < elements.size(); ++i) {
    if (i > 0) s += ", ";
    s += element_text(key, elements[i], data_type);
  }
  return s + " }";
}

std::string family_text(TableFamily f) { return f == TableFamily::inet ? "inet" : "arp"; }

std::string hook_text(BaseHook::Hook h) {
  switch (h) {
    case BaseHook::Hook::prerouting: return "prerouting";
    case BaseHook::Hook::input: return "input";
    case BaseHook::Hook::forward: return "forward";
    case BaseHook::Hook::output: return "output";
    case BaseHook::Hook::postrouting: return "postrouting";
  }
  return "?";
}

std::string base_chain_text(const BaseHook& b) {
  return std::string(b.nat ? "type nat" : "type filter") + " hook " + hook_text(b.hook) + " priority " +
         std::to_string(b.priority) + "; policy " + (b.policy_drop ? "drop" : "accept") + ";";
}

// The lines inside "set NAME { ... }", without the elements.
std::vector<std::string> set_decl_lines(const Set& s) {
  std::vector<std::string> lines;
  const bool by_typeof = std::find(s.key.begin(), s.key.end(), KeyType::nd_target) != s.key.end();
  std::string type = by_typeof ? "typeof " : "type ";
  for (std::size_t i = 0; i < s.key.size(); ++i) {
    if (i > 0) type += " . ";
    // typeof: the expression each part is read by (only interface names go
    // with an ND target).
    type += by_typeof ? selector(key_field(s.key[i])) : key_type_name(s.key[i]);
  }
  if (s.verdict_map) type += " : verdict";
  if (s.data_type) type += std::string(" : ") + key_type_name(*s.data_type);
  if (s.quota_map) type += " : quota";
  lines.push_back(type);
  if (s.size != 0) lines.push_back("size " + std::to_string(s.size));
  std::string flags;
  auto add_flag = [&](bool on, const char* name) {
    if (!on) return;
    flags += flags.empty() ? "flags " : ",";
    flags += name;
  };
  add_flag(s.interval, "interval");
  add_flag(s.dynamic, "dynamic");
  add_flag(s.timeout, "timeout");
  if (!flags.empty()) lines.push_back(flags);
  if (s.timeout_ms) lines.push_back("timeout " + duration_text(*s.timeout_ms));
  return lines;
}

std::string quota_body(const QuotaObject& q) {
  std::string s = "over " + std::to_string(q.bytes) + " bytes";
  if (q.consumed != 0) s += " used " + std::to_string(q.consumed) + " bytes";
  return s;
}

std::string set_keyword(const Set& s) { return s.verdict_map || s.data_type || s.quota_map ? "map" : "set"; }

std::string one_line_set(const Set& s) {
  std::string body;
  for (const auto& l : set_decl_lines(s)) body += l + "; ";
  return "{ " + body + "}";
}

std::string one_line_chain(const Chain& c) {
  if (!c.base) return "";
  return " { " + base_chain_text(*c.base) + " }";
}

}  // namespace

std::string to_nft_text(const Rule& r) {
  std::string s;
  auto add = [&s](const std::string& part) {
    if (!s.empty()) s += " ";
    s += part;
  };
  for (const auto& m : r.matches) add(match_text(m));
  for (const auto& st : r.statements) add(std::visit(StatementText{}, st));
  if (!r.comment.empty()) add("comment \"" + nft_string(r.comment, 127) + "\"");
  return s;
}

std::string to_nft_text(const Chain& c) {
  std::string s = "\tchain " + c.name + " {\n";
  if (c.base) s += "\t\t" + base_chain_text(*c.base) + "\n";
  for (const auto& r : c.rules) s += "\t\t" + to_nft_text(r) + "\n";
  return s + "\t}\n";
}

std::string to_nft_text(const Table& t) {
  std::string s = "table " + family_text(t.family) + " " + t.name + " {\n";
  bool first = true;
  auto separate = [&] {
    if (!first) s += "\n";
    first = false;
  };
  for (const auto& q : t.quotas) {
    separate();
    s += "\tquota " + q.name + " {\n\t\t" + quota_body(q) + "\n\t}\n";
  }
  for (const auto& set : t.sets) {
    separate();
    s += "\t" + set_keyword(set) + " " + set.name + " {\n";
    for (const auto& l : set_decl_lines(set)) s += "\t\t" + l + "\n";
    if (!set.elements.empty()) s += "\t\telements = " + elements_text(set.key, set.elements, set.data_type) + "\n";
    s += "\t}\n";
  }
  for (const auto& c : t.chains) {
    separate();
    s += to_nft_text(c);
  }
  return s + "}\n";
}

std::string to_nft_text(const Ruleset& rs) {
  std::string s;
  for (const auto& t : rs.tables) s += to_nft_text(t);
  return s;
}

std::string to_nft_text(const Plan& p) {
  std::string s;
  for (const auto& op : p.ops) {
    const std::string where = family_text(op.family) + " " + op.table;
    switch (op.kind) {
      case Op::Kind::add_table: s += "add table " + where + "\n"; break;
      case Op::Kind::delete_table: s += "delete table " + where + "\n"; break;
      case Op::Kind::add_set:
        s += "add " + set_keyword(op.set) + " " + where + " " + op.set.name + " " + one_line_set(op.set) + "\n";
        if (!op.set.elements.empty()) {
          s += "add element " + where + " " + op.set.name + " " +
               elements_text(op.set.key, op.set.elements, op.set.data_type) + "\n";
        }
        break;
      case Op::Kind::delete_set: s += "delete set " + where + " " + op.name + "\n"; break;
      case Op::Kind::add_elements:
        if (!op.elements.empty()) {
          s += "add element " + where + " " + op.name + " " + elements_text(op.set.key, op.elements, op.set.data_type) +
               "\n";
        }
        break;
      case Op::Kind::delete_elements:
      case Op::Kind::destroy_elements: {
        // Deleting takes only the keys.
        std::vector<SetElement> keys;
        for (const auto& e : op.elements) keys.push_back(SetElement{e.key, {}, {}, std::nullopt, {}, {}});
        const char* verb = op.kind == Op::Kind::delete_elements ? "delete" : "destroy";
        if (!keys.empty())
          s += std::string(verb) + " element " + where + " " + op.name + " " + elements_text(op.set.key, keys) + "\n";
        break;
      }
      case Op::Kind::flush_set: s += "flush set " + where + " " + op.name + "\n"; break;
      case Op::Kind::add_quota:
        s += "add quota " + where + " " + op.quota.name + " { " + quota_body(op.quota) + " }\n";
        break;
      case Op::Kind::delete_quota: s += "delete quota " + where + " " + op.name + "\n"; break;
      case Op::Kind::add_chain:
        s += "add chain " + where + " " + op.chain.name + one_line_chain(op.chain) + "\n";
        for (const auto& r : op.chain.rules)
          s += "add rule " + where + " " + op.chain.name + " " + to_nft_text(r) + "\n";
        break;
      case Op::Kind::delete_chain: s += "delete chain " + where + " " + op.name + "\n"; break;
      case Op::Kind::flush_chain: s += "flush chain " + where + " " + op.name + "\n"; break;
      case Op::Kind::add_rule: s += "add rule " + where + " " + op.name + " " + to_nft_text(op.rule) + "\n"; break;
    }
  }
  return s;
}

Plan plan_replace(const Ruleset& rs) {
  Plan p;
  for (const auto& t : rs.tables) {
    auto op_for = [&t](Op::Kind kind) {
      Op op;
      op.kind = kind;
      op.family = t.family;
      op.table = t.name;
      return op;
    };
    // "add" first so that "delete" cannot fail on a missing table; the whole
    // plan is one transaction, so nobody sees the table empty.
    p.ops.push_back(op_for(Op::Kind::add_table));
    p.ops.push_back(op_for(Op::Kind::delete_table));
    p.ops.push_back(op_for(Op::Kind::add_table));
    // Chains first (empty): map elements and rules may jump or goto any of them.
    for (const auto& c : t.chains) {
      Op op = op_for(Op::Kind::add_chain);
      op.name = c.name;
      op.chain.name = c.name;
      op.chain.base = c.base;
      p.ops.push_back(std::move(op));
    }
    // Quotas before sets: a quota map's elements name them.
    for (const auto& q : t.quotas) {
      Op op = op_for(Op::Kind::add_quota);
      op.name = q.name;
      op.quota = q;
      p.ops.push_back(std::move(op));
    }
    for (const auto& s : t.sets) {
      Op op = op_for(Op::Kind::add_set);
      op.name = s.name;
      op.set = s;
      p.ops.push_back(std::move(op));
    }
    for (const auto& c : t.chains) {
      for (const auto& r : c.rules) {
        Op op = op_for(Op::Kind::add_rule);
        op.name = c.name;
        op.rule = r;
        p.ops.push_back(std::move(op));
      }
    }
  }
  return p;
}

}  // namespace sg::netpolicy
