#include "netpolicy/nft_backend.h"

#include <linux/if_arp.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter_arp.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <set>

namespace sg::netpolicy {

namespace {

// ---------------------------------------------------------------------------
// Where each Field lives in the packet, and what nft puts in front of it.

enum class Source : std::uint8_t { meta, payload, ct, exthdr };

struct FieldSpec {
  Source source = Source::meta;
  std::uint32_t key = 0;          // meta key, ct key, payload base or exthdr type
  std::uint32_t offset = 0;       // payload / exthdr offset in bytes
  std::uint32_t len = 0;          // bytes loaded into the register
  Bytes mask;                     // applied right after the load (ip hdrlength, frag-off)
  bool host_order = false;        // meta / ct values: ranges would need a byteorder conversion
  std::uint8_t need_nfproto = 0;  // NFPROTO_IPV4 / NFPROTO_IPV6 dependency (inet family)
  std::uint8_t need_l4proto = 0;  // IPPROTO_* dependency
  bool need_ether = false;        // meta iiftype ether dependency
  bool arp_only = false;
};

FieldSpec field_spec(Field f) {
  FieldSpec s;
  auto meta = [&](std::uint32_t key, std::uint32_t len) {
    s.source = Source::meta;
    s.key = key;
    s.len = len;
    s.host_order = true;
  };
  auto payload = [&](std::uint32_t base, std::uint32_t offset, std::uint32_t len) {
    s.source = Source::payload;
    s.key = base;
    s.offset = offset;
    s.len = len;
  };
  switch (f) {
    case Field::iifname: meta(NFT_META_IIFNAME, 16); break;
    case Field::oifname: meta(NFT_META_OIFNAME, 16); break;
    case Field::nfproto: meta(NFT_META_NFPROTO, 1); break;
    case Field::l4proto: meta(NFT_META_L4PROTO, 1); break;
    case Field::ether_saddr:
      payload(NFT_PAYLOAD_LL_HEADER, 6, 6);
      s.need_ether = true;
      break;
    case Field::ip_saddr:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4);
      s.need_nfproto = NFPROTO_IPV4;
      break;
    case Field::ip_daddr:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
      s.need_nfproto = NFPROTO_IPV4;
      break;
    case Field::ip6_saddr:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 8, 16);
      s.need_nfproto = NFPROTO_IPV6;
      break;
    case Field::ip6_daddr:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16);
      s.need_nfproto = NFPROTO_IPV6;
      break;
    case Field::ip_hdrlength:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 0, 1);
      s.mask = {0x0f};
      s.need_nfproto = NFPROTO_IPV4;
      break;
    case Field::ip_frag_off:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 6, 2);
      s.mask = {0x1f, 0xff};
      s.need_nfproto = NFPROTO_IPV4;
      break;
    case Field::th_dport: payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2); break;
    case Field::tcp_flags:
      payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1);
      s.need_l4proto = IPPROTO_TCP;
      break;
    case Field::icmp_type:
      payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
      s.need_nfproto = NFPROTO_IPV4;
      s.need_l4proto = IPPROTO_ICMP;
      break;
    case Field::icmpv6_type:
      payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
      s.need_nfproto = NFPROTO_IPV6;
      s.need_l4proto = IPPROTO_ICMPV6;
      break;
    case Field::icmpv6_nd_target: payload(NFT_PAYLOAD_TRANSPORT_HEADER, 8, 16); break;
    case Field::nh_first_byte: payload(NFT_PAYLOAD_NETWORK_HEADER, 0, 1); break;
    case Field::ct_state:
      s.source = Source::ct;
      s.key = NFT_CT_STATE;
      s.len = 4;
      s.host_order = true;
      break;
    case Field::ct_mark:
      s.source = Source::ct;
      s.key = NFT_CT_MARK;
      s.len = 4;
      s.host_order = true;
      break;
    case Field::ct_direction:
      s.source = Source::ct;
      s.key = NFT_CT_DIRECTION;
      s.len = 1;
      break;
    case Field::arp_sip:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 14, 4);
      s.arp_only = true;
      break;
    case Field::arp_sha:
      payload(NFT_PAYLOAD_NETWORK_HEADER, 8, 6);
      s.arp_only = true;
      break;
    case Field::ip6_exthdr_routing:
    case Field::ip6_exthdr_fragment:
      s.source = Source::exthdr;
      s.key = f == Field::ip6_exthdr_routing ? 43 : 44;  // IPPROTO_ROUTING / IPPROTO_FRAGMENT
      s.len = 1;
      s.need_nfproto = NFPROTO_IPV6;
      break;
    case Field::meta_mark: meta(NFT_META_MARK, 4); break;
  }
  return s;
}

std::string field_name(Field f) {
  Match m;
  m.fields = {f};
  m.op = Match::Op::in_set;
  m.set = "x";
  std::string s = to_nft_text(Rule{{m}, {}, ""});
  return s.substr(0, s.size() - 3);  // drop " @x"
}

std::uint32_t round4(std::uint32_t n) { return (n + 3U) & ~3U; }

// nft's datatype ids (nftables include/datatype.h): `nft list` derives the
// printed type of a set from them.
struct KeySpec {
  std::uint32_t type_id;
  std::uint32_t len;
  std::uint32_t byteorder;  // nft's BYTEORDER_HOST_ENDIAN = 1, BYTEORDER_BIG_ENDIAN = 2
};

KeySpec key_spec(KeyType k) {
  switch (k) {
    case KeyType::ipv4_addr: return {7, 4, 2};
    case KeyType::ipv6_addr: return {8, 16, 2};
    case KeyType::inet_proto: return {12, 1, 2};
    case KeyType::inet_service: return {13, 2, 2};
    case KeyType::ifname: return {41, 16, 1};
    case KeyType::ether_addr: return {9, 6, 2};
    case KeyType::classid: return {23, 4, 1};
    case KeyType::mark: return {19, 4, 1};
    case KeyType::nd_target: return {4, 16, 2};  // nft's "integer"
    case KeyType::ct_state: return {26, 4, 1};
    case KeyType::ct_dir: return {27, 1, 0};  // nft gives it no byte order
  }
  return {0, 0, 0};
}

constexpr std::uint32_t kTypeBits = 6;

// NFT_MSG_DESTROYSETELEM (Linux 6.3): delete elements, ignoring those that
// are already gone. Debian's 6.1 uapi headers predate it.
constexpr std::uint16_t kNftMsgDestroySetElem = 30;  // concatenated type ids: (a << 6) | b

std::uint16_t nfproto_of(TableFamily f) { return f == TableFamily::inet ? NFPROTO_INET : NFPROTO_ARP; }

std::string family_name(TableFamily f) { return f == TableFamily::inet ? "inet" : "arp"; }

// ---------------------------------------------------------------------------
// Expression builders. Every nftnl object is owned until handed to its parent.

class RuleBuilder {
 public:
  explicit RuleBuilder(nftnl_rule* rule) : rule_(rule) {}

  void add(nft::Expr e) { nftnl_rule_add_expr(rule_, e.release()); }

  static nft::Expr make(const char* name) { return nft::Expr(nftnl_expr_alloc(name)); }

  void meta_load(std::uint32_t key, std::uint32_t reg) {
    auto e = make("meta");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_DREG, reg);
    add(std::move(e));
  }
  // `meta KEY set` / `ct KEY set` from register reg.
  void meta_store(std::uint32_t key, std::uint32_t reg) {
    auto e = make("meta");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_SREG, reg);
    add(std::move(e));
  }
  void ct_store(std::uint32_t key, std::uint32_t reg) {
    auto e = make("ct");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, key);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_SREG, reg);
    add(std::move(e));
  }
  void payload_load(std::uint32_t base, std::uint32_t offset, std::uint32_t len, std::uint32_t reg) {
    auto e = make("payload");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_DREG, reg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_BASE, base);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_OFFSET, offset);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_LEN, len);
    add(std::move(e));
  }
  void ct_load(std::uint32_t key, std::uint32_t reg) {
    auto e = make("ct");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, key);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, reg);
    add(std::move(e));
  }
  void exthdr_present(std::uint32_t type, std::uint32_t reg) {
    auto e = make("exthdr");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_DREG, reg);
    nftnl_expr_set_u8(e.get(), NFTNL_EXPR_EXTHDR_TYPE, static_cast<std::uint8_t>(type));
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_OFFSET, 0);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_LEN, 1);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_FLAGS, NFT_EXTHDR_F_PRESENT);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_OP, NFT_EXTHDR_OP_IPV6);
    add(std::move(e));
  }
  // reg = (reg & mask) ^ xor_value (no xor: zeros).
  void bitwise(std::uint32_t reg, const Bytes& mask, const Bytes& xor_value = {}) {
    auto e = make("bitwise");
    const Bytes xv = xor_value.empty() ? Bytes(mask.size(), 0) : xor_value;
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_SREG, reg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_DREG, reg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_LEN, static_cast<std::uint32_t>(mask.size()));
    nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_MASK, mask.data(), static_cast<std::uint32_t>(mask.size()));
    nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_XOR, xv.data(), static_cast<std::uint32_t>(xv.size()));
    add(std::move(e));
  }
  // `update @set { <key in NFT_REG_1...> <expr> }`; takes the expression.
  void dynset_update(const std::string& set, nft::Expr expr) {
    auto e = make("dynset");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
    nftnl_expr_set_str(e.get(), NFTNL_EXPR_DYNSET_SET_NAME, set.c_str());
    nftnl_expr_set(e.get(), NFTNL_EXPR_DYNSET_EXPR, expr.release(), 0);
    add(std::move(e));
  }
  void cmp(std::uint32_t reg, std::uint32_t op, const Bytes& data) {
    auto e = make("cmp");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_SREG, reg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_OP, op);
    nftnl_expr_set(e.get(), NFTNL_EXPR_CMP_DATA, data.data(), static_cast<std::uint32_t>(data.size()));
    add(std::move(e));
  }
  void range_neq(std::uint32_t reg, const Bytes& lo, const Bytes& hi) {
    auto e = make("range");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_RANGE_SREG, reg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_RANGE_OP, NFT_RANGE_NEQ);
    nftnl_expr_set(e.get(), NFTNL_EXPR_RANGE_FROM_DATA, lo.data(), static_cast<std::uint32_t>(lo.size()));
    nftnl_expr_set(e.get(), NFTNL_EXPR_RANGE_TO_DATA, hi.data(), static_cast<std::uint32_t>(hi.size()));
    add(std::move(e));
  }
  void byteorder_hton(std::uint32_t reg, std::uint32_t len, std::uint32_t size) {
    auto e = make("byteorder");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_SREG, reg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_DREG, reg);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_LEN, len);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_SIZE, size);
    add(std::move(e));
  }
  void lookup(std::uint32_t reg, const std::string& set, bool invert, bool verdict) {
    auto e = make("lookup");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SREG, reg);
    nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOOKUP_SET, set.c_str());
    if (verdict) nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_DREG, NFT_REG_VERDICT);
    if (invert) nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
    add(std::move(e));
  }
  void immediate_data(std::uint32_t reg, const Bytes& data) {
    auto e = make("immediate");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_DREG, reg);
    nftnl_expr_set(e.get(), NFTNL_EXPR_IMM_DATA, data.data(), static_cast<std::uint32_t>(data.size()));
    add(std::move(e));
  }

 private:
  nftnl_rule* rule_;
};

nft::Expr make_limit(const Limit& l) {
  auto e = RuleBuilder::make("limit");
  nftnl_expr_set_u64(e.get(), NFTNL_EXPR_LIMIT_RATE, l.rate);
  nftnl_expr_set_u64(e.get(), NFTNL_EXPR_LIMIT_UNIT, 1);  // per second
  // nft's default burst is 5 packets (and 0 bytes) when none is given.
  std::uint32_t burst = l.burst != 0 ? l.burst : (l.bytes ? 0U : 5U);
  nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_BURST, burst);
  nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_TYPE, l.bytes ? NFT_LIMIT_PKT_BYTES : NFT_LIMIT_PKTS);
  nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_FLAGS, l.over ? static_cast<std::uint32_t>(NFT_LIMIT_F_INV) : 0U);
  return e;
}

// Which layers the rule has already pinned down, so a dependency is emitted
// once, where nft would emit it.
struct ProtoContext {
  std::uint8_t nfproto = 0;
  std::uint8_t l4proto = 0;
  bool ether = false;
};

// Names of the interval sets of a table, as far as the plan declares them.
using IntervalSets = std::set<std::string>;

class RuleCompiler {
 public:
  RuleCompiler(TableFamily family, nftnl_rule* rule, const IntervalSets& interval_sets)
      : family_(family), b_(rule), interval_sets_(interval_sets) {}

  Status compile(const Rule& r) {
    std::vector<const Match*> pending;
    for (std::size_t i = 0; i < r.matches.size(); ++i) {
      const Match& m = r.matches[i];
      if (family_ == TableFamily::arp && is_mergeable(m)) {
        // nft merges runs of adjacent "payload == value" matches into one
        // load (seen for arp tables: arp saddr ether + arp saddr ip).
        pending.push_back(&m);
        continue;
      }
      if (auto st = flush_merged(pending); !st) return st;
      if (auto st = compile_match(m); !st) return st;
    }
    if (auto st = flush_merged(pending); !st) return st;
    for (const auto& s : r.statements) {
      if (auto st = std::visit([this](const auto& x) { return compile_statement(x); }, s); !st) return st;
    }
    return {};
  }

 private:
  static bool is_mergeable(const Match& m) {
    if (m.op != Match::Op::eq || m.fields.size() != 1) return false;
    auto s = field_spec(m.fields[0]);
    return s.source == Source::payload && s.mask.empty() && s.need_nfproto == 0 && s.need_l4proto == 0 && !s.need_ether;
  }

  Status flush_merged(std::vector<const Match*>& run) {
    if (run.empty()) return {};
    std::vector<const Match*> sorted = run;
    run.clear();
    if (sorted.size() > 1) {
      std::stable_sort(sorted.begin(), sorted.end(), [](const Match* a, const Match* b) {
        auto sa = field_spec(a->fields[0]);
        auto sb = field_spec(b->fields[0]);
        return std::tie(sa.key, sa.offset) < std::tie(sb.key, sb.offset);
      });
    }
    std::size_t i = 0;
    while (i < sorted.size()) {
      auto first = field_spec(sorted[i]->fields[0]);
      if (auto st = check_value(*sorted[i], sorted[i]->value, first.len); !st) return st;
      Bytes value = sorted[i]->value;
      std::uint32_t len = first.len;
      std::size_t j = i + 1;
      while (j < sorted.size()) {
        auto next = field_spec(sorted[j]->fields[0]);
        if (next.key != first.key || next.offset != first.offset + len || len + next.len > 16) break;
        if (auto st = check_value(*sorted[j], sorted[j]->value, next.len); !st) return st;
        value.insert(value.end(), sorted[j]->value.begin(), sorted[j]->value.end());
        len += next.len;
        ++j;
      }
      b_.payload_load(first.key, first.offset, len, NFT_REG_1);
      b_.cmp(NFT_REG_1, NFT_CMP_EQ, value);
      i = j;
    }
    return {};
  }

  static Status check_value(const Match& m, const Bytes& v, std::size_t len) {
    if (v.size() == len) return {};
    return make_error("value of '" + field_name(m.fields[0]) + "' has " + std::to_string(v.size()) +
                      " bytes, the field has " + std::to_string(len) + " (use the *_bytes helpers of ruleset.h)");
  }

  // Loads a set key (one field, or a concatenation) into NFT_REG_1 onwards.
  // A field with a prefix length is masked to it in its register, as nft
  // does for `(ip daddr & 255.255.255.0)`.
  Status load_key(const std::vector<Field>& fields, const std::string& set, const std::vector<int>& prefix_lens = {}) {
    if (fields.empty()) return make_error("a lookup in set '" + set + "' has no key");
    if (prefix_lens.size() > fields.size()) {
      return make_error("a lookup in set '" + set + "' has more prefix lengths than key fields");
    }
    for (Field x : fields) {
      if (auto st = check_family(x); !st) return st;
      dependencies(x);
    }
    auto mask = [&](std::size_t i, std::uint32_t reg) -> Status {
      const int bits = i < prefix_lens.size() ? prefix_lens[i] : 0;
      const auto len = field_spec(fields[i]).len;
      if (bits == 0 || bits == static_cast<int>(len * 8)) return {};
      const Field x = fields[i];
      if ((x != Field::ip_saddr && x != Field::ip_daddr && x != Field::ip6_saddr && x != Field::ip6_daddr) ||
          bits < 0 || bits > static_cast<int>(len * 8)) {
        return make_error("a lookup in set '" + set + "' masks '" + field_name(x) + "' to " + std::to_string(bits) +
                          " bits (only addresses can be masked, to at most their width)");
      }
      b_.bitwise(reg, prefix_mask(len, bits));
      return {};
    };
    if (fields.size() == 1) {
      load(fields[0], NFT_REG_1);
      return mask(0, NFT_REG_1);
    }
    std::uint32_t word = 0;
    for (std::size_t i = 0; i < fields.size(); ++i) {
      const Field x = fields[i];
      auto sx = field_spec(x);
      const std::uint32_t reg = word == 0 ? static_cast<std::uint32_t>(NFT_REG_1) : NFT_REG32_00 + word;
      if (word + round4(sx.len) / 4 > 16) return make_error("concatenation longer than the 64 register bytes");
      load(x, reg);
      if (auto st = mask(i, reg); !st) return st;
      // nft 1.0.6 converts meta l4proto to network order inside a
      // concatenated interval lookup; a 1-byte no-op, kept so both
      // loaders leave the same bytecode.
      if (x == Field::l4proto && interval_sets_.count(set) != 0) b_.byteorder_hton(reg, 1, 2);
      word += round4(sx.len) / 4;
    }
    return {};
  }

  Status check_family(Field f) {
    auto s = field_spec(f);
    if (family_ == TableFamily::arp) {
      if (s.arp_only || f == Field::iifname || f == Field::oifname) return {};
      return make_error("'" + field_name(f) + "' cannot be matched in an arp table");
    }
    if (s.arp_only) return make_error("'" + field_name(f) + "' can only be matched in an arp table");
    return {};
  }

  void dependencies(Field f) {
    if (family_ != TableFamily::inet) return;
    auto s = field_spec(f);
    if (s.need_ether && !ctx_.ether) {
      b_.meta_load(NFT_META_IIFTYPE, NFT_REG_1);
      std::uint16_t ether = ARPHRD_ETHER;
      Bytes v(2);
      std::memcpy(v.data(), &ether, 2);
      b_.cmp(NFT_REG_1, NFT_CMP_EQ, v);
      ctx_.ether = true;
    }
    // A known transport protocol implies its network protocol (icmp: ipv4).
    if (s.need_l4proto != 0 && ctx_.l4proto == s.need_l4proto) return;
    if (s.need_nfproto != 0 && ctx_.nfproto != s.need_nfproto) {
      b_.meta_load(NFT_META_NFPROTO, NFT_REG_1);
      b_.cmp(NFT_REG_1, NFT_CMP_EQ, u8_bytes(s.need_nfproto));
      ctx_.nfproto = s.need_nfproto;
    }
    if (s.need_l4proto != 0) {
      b_.meta_load(NFT_META_L4PROTO, NFT_REG_1);
      b_.cmp(NFT_REG_1, NFT_CMP_EQ, u8_bytes(s.need_l4proto));
      ctx_.l4proto = s.need_l4proto;
    }
  }

  // Loads the field into reg; with_mask applies the field's own mask.
  void load(Field f, std::uint32_t reg, std::uint32_t len_override = 0) {
    auto s = field_spec(f);
    const std::uint32_t len = len_override != 0 ? len_override : s.len;
    switch (s.source) {
      case Source::meta: b_.meta_load(s.key, reg); break;
      case Source::payload: b_.payload_load(s.key, s.offset, len, reg); break;
      case Source::ct: b_.ct_load(s.key, reg); break;
      case Source::exthdr: b_.exthdr_present(s.key, reg); break;
    }
    if (!s.mask.empty()) b_.bitwise(reg, s.mask);
  }

  void note_context(const Match& m) {
    if (m.op != Match::Op::eq || m.fields.size() != 1 || m.value.size() != 1) return;
    if (m.fields[0] == Field::nfproto) ctx_.nfproto = m.value[0];
    if (m.fields[0] == Field::l4proto) ctx_.l4proto = m.value[0];
  }

  Status compile_match(const Match& m) {
    if (m.fields.empty()) return make_error("a match without a field");
    for (Field f : m.fields) {
      if (auto st = check_family(f); !st) return st;
    }
    const Field f = m.fields.front();
    const auto spec = field_spec(f);
    const std::string what = field_name(f);
    using Op = Match::Op;
    if (m.fields.size() > 1 && m.op != Op::in_set && m.op != Op::not_in_set && m.op != Op::vmap) {
      return make_error("several fields can only be looked up in a set");
    }
    switch (m.op) {
      case Op::eq:
      case Op::neq: {
        if (auto st = check_value(m, m.value, spec.len); !st) return st;
        dependencies(f);
        load(f, NFT_REG_1);
        if (spec.source == Source::exthdr) {
          const bool present = (m.op == Op::eq) == (m.value[0] != 0);
          b_.cmp(NFT_REG_1, NFT_CMP_EQ, u8_bytes(present ? 1 : 0));
        } else {
          b_.cmp(NFT_REG_1, m.op == Op::eq ? NFT_CMP_EQ : NFT_CMP_NEQ, m.value);
        }
        note_context(m);
        return {};
      }
      case Op::prefix:
      case Op::not_prefix: {
        if (auto st = check_value(m, m.value, spec.len); !st) return st;
        const auto bits = static_cast<int>(spec.len * 8);
        if (m.prefix_len <= 0 || m.prefix_len > bits) {
          return make_error("prefix length " + std::to_string(m.prefix_len) + " does not fit '" + what + "' (1.." +
                            std::to_string(bits) + ")");
        }
        const std::uint32_t op = m.op == Op::prefix ? NFT_CMP_EQ : NFT_CMP_NEQ;
        const auto whole = static_cast<std::size_t>(m.prefix_len / 8);
        if (f == Field::iifname || f == Field::oifname) {
          // Wildcard interface names ("sg*") compare the leading bytes only.
          if (m.prefix_len % 8 != 0) return make_error("an interface name prefix must be whole characters");
          load(f, NFT_REG_1);
          b_.cmp(NFT_REG_1, op, Bytes(m.value.begin(), m.value.begin() + static_cast<std::ptrdiff_t>(whole)));
          return {};
        }
        if (spec.source != Source::payload || !spec.mask.empty()) {
          return make_error("'" + what + "' cannot be matched by prefix");
        }
        dependencies(f);
        if (m.prefix_len % 8 == 0) {
          // nft shortens the load to the prefix's whole bytes.
          load(f, NFT_REG_1, static_cast<std::uint32_t>(whole));
          b_.cmp(NFT_REG_1, op, Bytes(m.value.begin(), m.value.begin() + static_cast<std::ptrdiff_t>(whole)));
        } else {
          const Bytes mask = prefix_mask(spec.len, m.prefix_len);
          Bytes value = m.value;
          for (std::size_t i = 0; i < value.size(); ++i) value[i] &= mask[i];
          load(f, NFT_REG_1);
          b_.bitwise(NFT_REG_1, mask);
          b_.cmp(NFT_REG_1, op, value);
        }
        return {};
      }
      case Op::range: {
        if (auto st = check_value(m, m.value, spec.len); !st) return st;
        if (auto st = check_value(m, m.value_hi, spec.len); !st) return st;
        if (spec.host_order && spec.len > 1) {
          return make_error("a range on '" + what + "' is not supported (host byte order)");
        }
        dependencies(f);
        load(f, NFT_REG_1);
        // nft 1.0.6 writes "lo-hi" as two comparisons.
        b_.cmp(NFT_REG_1, NFT_CMP_GTE, m.value);
        b_.cmp(NFT_REG_1, NFT_CMP_LTE, m.value_hi);
        return {};
      }
      case Op::in_set:
      case Op::not_in_set:
      case Op::vmap: {
        if (m.set.empty()) return make_error("a set lookup on '" + what + "' names no set");
        if (auto st = load_key(m.fields, m.set, m.key_prefix_lens); !st) return st;
        b_.lookup(NFT_REG_1, m.set, m.op == Op::not_in_set, m.op == Op::vmap);
        return {};
      }
      case Op::any_bits:
      case Op::masked_eq: {
        if (auto st = check_value(m, m.value, spec.len); !st) return st;
        if (m.op == Op::masked_eq) {
          if (auto st = check_value(m, m.mask, spec.len); !st) return st;
        }
        dependencies(f);
        load(f, NFT_REG_1);
        if (m.op == Op::any_bits) {
          b_.bitwise(NFT_REG_1, m.value);
          b_.cmp(NFT_REG_1, NFT_CMP_NEQ, Bytes(spec.len, 0));
        } else {
          b_.bitwise(NFT_REG_1, m.mask);
          b_.cmp(NFT_REG_1, NFT_CMP_EQ, m.value);
        }
        return {};
      }
    }
    return make_error("unknown match op");
  }

  Status compile_statement(const Counter&) {
    b_.add(RuleBuilder::make("counter"));
    return {};
  }
  Status compile_statement(const Log& l) {
    auto e = RuleBuilder::make("log");
    std::string prefix = l.prefix.substr(0, 127);
    nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOG_PREFIX, prefix.c_str());
    nftnl_expr_set_u16(e.get(), NFTNL_EXPR_LOG_GROUP, l.group);
    b_.add(std::move(e));
    return {};
  }
  Status compile_statement(const Limit& l) {
    if (l.rate == 0) return make_error("limit rate 0 would never pass: use drop instead");
    b_.add(make_limit(l));
    return {};
  }
  Status compile_statement(const QuotaRef& q) {
    auto e = RuleBuilder::make("objref");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_IMM_TYPE, NFT_OBJECT_QUOTA);
    nftnl_expr_set_str(e.get(), NFTNL_EXPR_OBJREF_IMM_NAME, q.name.c_str());
    b_.add(std::move(e));
    return {};
  }
  Status compile_statement(const CtMarkSet& c) {
    b_.immediate_data(NFT_REG_1, host32_bytes(c.mark));
    b_.ct_store(NFT_CT_MARK, NFT_REG_1);
    return {};
  }
  Status compile_statement(const PrioritySet& p) {
    b_.immediate_data(NFT_REG_1, host32_bytes(p.priority));
    b_.meta_store(NFT_META_PRIORITY, NFT_REG_1);
    return {};
  }
  Status compile_statement(const MarkSet& m) {
    b_.immediate_data(NFT_REG_1, host32_bytes(m.mark));
    b_.meta_store(NFT_META_MARK, NFT_REG_1);
    return {};
  }
  Status compile_statement(const MssSet& m) {
    if (family_ != TableFamily::inet) return make_error("tcp option maxseg needs an inet table");
    if (m.mss == 0) return make_error("an MSS of 0 would stall every TCP connection");
    // As nft: the tcp dependency unless the rule already pinned it, then
    // the value written over the option's 2-byte size field (kind 2, offset 2).
    if (ctx_.l4proto != IPPROTO_TCP) {
      b_.meta_load(NFT_META_L4PROTO, NFT_REG_1);
      b_.cmp(NFT_REG_1, NFT_CMP_EQ, u8_bytes(IPPROTO_TCP));
      ctx_.l4proto = IPPROTO_TCP;
    }
    b_.immediate_data(NFT_REG_1, be16_bytes(m.mss));
    auto e = RuleBuilder::make("exthdr");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_SREG, NFT_REG_1);
    nftnl_expr_set_u8(e.get(), NFTNL_EXPR_EXTHDR_TYPE, 2);  // TCPOPT_MAXSEG
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_OFFSET, 2);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_LEN, 2);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_OP, NFT_EXTHDR_OP_TCPOPT);
    b_.add(std::move(e));
    return {};
  }
  Status compile_statement(const Masquerade&) {
    if (family_ != TableFamily::inet) return make_error("masquerade needs an inet table");
    b_.add(RuleBuilder::make("masq"));
    return {};
  }
  Status compile_statement(const PriorityMap& p) {
    if (auto st = map_value(p.fields, p.map, p.key_prefix_lens); !st) return st;
    b_.meta_store(NFT_META_PRIORITY, NFT_REG_1);
    return {};
  }
  // Looks the key up in `map` and leaves the value in NFT_REG_1.
  Status map_value(const std::vector<Field>& fields, const std::string& map, const std::vector<int>& prefix_lens = {}) {
    if (map.empty()) return make_error("a map lookup names no map");
    if (auto st = load_key(fields, map, prefix_lens); !st) return st;
    auto e = RuleBuilder::make("lookup");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
    nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOOKUP_SET, map.c_str());
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_DREG, NFT_REG_1);
    b_.add(std::move(e));
    return {};
  }
  Status compile_statement(const CtMarkMap& c) {
    if (auto st = map_value(c.fields, c.map); !st) return st;
    b_.ct_store(NFT_CT_MARK, NFT_REG_1);
    return {};
  }
  Status compile_statement(const CtMarkOr& c) {
    // As nft: load, (mark & ~bits) ^ bits, store.
    b_.ct_load(NFT_CT_MARK, NFT_REG_1);
    b_.bitwise(NFT_REG_1, host32_bytes(~c.bits), host32_bytes(c.bits));
    b_.ct_store(NFT_CT_MARK, NFT_REG_1);
    return {};
  }
  Status compile_statement(const QuotaMap& q) {
    if (q.map.empty()) return make_error("quota name ... map names no map");
    if (auto st = load_key(q.fields, q.map); !st) return st;
    auto e = RuleBuilder::make("objref");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_OBJREF_SET_SREG, NFT_REG_1);
    nftnl_expr_set_str(e.get(), NFTNL_EXPR_OBJREF_SET_NAME, q.map.c_str());
    b_.add(std::move(e));
    return {};
  }
  Status compile_statement(const CountUpdate& u) {
    if (u.key != Field::iifname && u.key != Field::oifname) return make_error("a drop counter is keyed by interface");
    if (u.tag.empty() || u.tag.size() > 15) return make_error("a counter tag must have 1 to 15 bytes: " + u.tag);
    load(u.key, NFT_REG_1);
    b_.immediate_data(NFT_REG32_00 + 4, ifname_bytes(u.tag));
    b_.dynset_update(u.set, RuleBuilder::make("counter"));
    return {};
  }
  Status compile_statement(const MeterUpdate& u) {
    if (auto st = check_family(u.key); !st) return st;
    auto spec = field_spec(u.key);
    dependencies(u.key);
    // `iifname . key`: the interface name fills NFT_REG_1 (16 bytes), the
    // key follows in the next 32-bit register.
    const std::uint32_t reg = u.by_iifname ? NFT_REG32_00 + 4 : static_cast<std::uint32_t>(NFT_REG_1);
    if (u.by_iifname) load(Field::iifname, NFT_REG_1);
    load(u.key, reg);
    const auto bits = static_cast<int>(spec.len * 8);
    if (u.key_prefix_len > 0 && u.key_prefix_len < bits) b_.bitwise(reg, prefix_mask(spec.len, u.key_prefix_len));
    b_.dynset_update(u.set, make_limit(u.limit));
    return {};
  }
  Status compile_statement(const Verdict& v) {
    auto e = RuleBuilder::make("immediate");
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
    switch (v.kind) {
      case Verdict::Kind::accept: nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT, NF_ACCEPT); break;
      case Verdict::Kind::drop: nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT, NF_DROP); break;
      case Verdict::Kind::ret:
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT, static_cast<std::uint32_t>(NFT_RETURN));
        break;
      case Verdict::Kind::jump:
      case Verdict::Kind::go_to:
        if (v.chain.empty()) return make_error("jump/goto without a chain name");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT,
                           static_cast<std::uint32_t>(v.kind == Verdict::Kind::jump ? NFT_JUMP : NFT_GOTO));
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_IMM_CHAIN, v.chain.c_str());
        break;
    }
    b_.add(std::move(e));
    return {};
  }

  TableFamily family_;
  RuleBuilder b_;
  const IntervalSets& interval_sets_;
  ProtoContext ctx_;
};

// ---------------------------------------------------------------------------
// Sets and elements.

struct SetLayout {
  bool concat = false;
  bool interval = false;
  std::vector<std::uint32_t> part_len;  // unpadded byte length of each key part
};

Result<SetLayout> set_layout(const Set& s) {
  if (s.key.empty()) return make_error("set '" + s.name + "' has no key type");
  SetLayout l;
  l.concat = s.key.size() > 1;
  l.interval = s.interval;
  for (auto k : s.key) l.part_len.push_back(key_spec(k).len);
  return l;
}

Bytes increment(Bytes v) {
  for (auto i = v.size(); i-- > 0;) {
    if (++v[i] != 0) break;
  }
  return v;
}

bool all_ones(const Bytes& v) {
  return std::all_of(v.begin(), v.end(), [](std::uint8_t b) { return b == 0xff; });
}

bool all_zero(const Bytes& v) {
  return std::all_of(v.begin(), v.end(), [](std::uint8_t b) { return b == 0; });
}

Result<Bytes> element_key(const SetLayout& l, const SetElement& e, bool high, const std::string& set) {
  if (e.key.size() != l.part_len.size()) {
    return make_error("an element of set '" + set + "' has " + std::to_string(e.key.size()) + " key parts, the set " +
                      std::to_string(l.part_len.size()));
  }
  Bytes key;
  for (std::size_t i = 0; i < e.key.size(); ++i) {
    const auto& part = e.key[i];
    const Bytes& v = high && !part.value_hi.empty() ? part.value_hi : part.value;
    if (v.size() != l.part_len[i]) {
      return make_error("an element of set '" + set + "' has a " + std::to_string(v.size()) + "-byte key part " +
                        std::to_string(i + 1) + ", the key type has " + std::to_string(l.part_len[i]));
    }
    key.insert(key.end(), v.begin(), v.end());
    if (l.concat) key.resize(round4(static_cast<std::uint32_t>(key.size())), 0);
  }
  return key;
}

nft::SetElem new_elem(const Bytes& key) {
  nft::SetElem el(nftnl_set_elem_alloc());
  nftnl_set_elem_set(el.get(), NFTNL_SET_ELEM_KEY, key.data(), static_cast<std::uint32_t>(key.size()));
  return el;
}

// Builds the kernel elements for the model's elements into s. For deletion
// only keys (and interval ends) are sent.
Status add_elements_to(nftnl_set* s, const Set& decl, const std::vector<SetElement>& elements, bool for_delete,
                       bool leading_zero_end) {
  auto layout = set_layout(decl);
  if (!layout) return layout.error();
  const SetLayout& l = *layout;
  if (leading_zero_end && l.interval && !l.concat && !elements.empty()) {
    // nft opens every single-field interval set with an interval end at 0
    // (unless an element starts there); do the same so both loaders agree.
    bool starts_at_zero = false;
    for (const auto& e : elements) {
      if (!e.key.empty() && all_zero(e.key[0].value)) starts_at_zero = true;
    }
    if (!starts_at_zero) {
      auto el = new_elem(Bytes(l.part_len[0], 0));
      nftnl_set_elem_set_u32(el.get(), NFTNL_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
      nftnl_set_elem_add(s, el.release());
    }
  }
  for (const auto& e : elements) {
    auto lo = element_key(l, e, false, decl.name);
    if (!lo) return lo.error();
    auto el = new_elem(*lo);
    if (l.interval && l.concat) {
      auto hi = element_key(l, e, true, decl.name);
      if (!hi) return hi.error();
      nftnl_set_elem_set(el.get(), NFTNL_SET_ELEM_KEY_END, hi->data(), static_cast<std::uint32_t>(hi->size()));
    }
    if (!for_delete) {
      if (decl.data_type) {
        const auto want = key_spec(*decl.data_type).len;
        if (e.data.size() != want) {
          return make_error("an element of map '" + decl.name + "' has a " + std::to_string(e.data.size()) +
                            "-byte value, the map's value type has " + std::to_string(want));
        }
        nftnl_set_elem_set(el.get(), NFTNL_SET_ELEM_DATA, e.data.data(), static_cast<std::uint32_t>(e.data.size()));
      }
      if (decl.quota_map) {
        if (e.object.empty()) return make_error("an element of quota map '" + decl.name + "' names no quota");
        nftnl_set_elem_set_str(el.get(), NFTNL_SET_ELEM_OBJREF, e.object.c_str());
      }
      if (decl.verdict_map) {
        if (e.verdict_chain.empty()) return make_error("an element of map '" + decl.name + "' has no chain");
        nftnl_set_elem_set_u32(el.get(), NFTNL_SET_ELEM_VERDICT, static_cast<std::uint32_t>(NFT_GOTO));
        nftnl_set_elem_set_str(el.get(), NFTNL_SET_ELEM_CHAIN, e.verdict_chain.c_str());
      }
      if (e.timeout_ms) {
        if (!decl.timeout) return make_error("set '" + decl.name + "' needs the timeout flag for element timeouts");
        nftnl_set_elem_set_u64(el.get(), NFTNL_SET_ELEM_TIMEOUT, *e.timeout_ms);
      }
    }
    const Bytes& top = e.key[0].value_hi.empty() ? e.key[0].value : e.key[0].value_hi;
    const bool open_end = l.interval && !l.concat && all_ones(top);
    if (!for_delete && (!e.comment.empty() || open_end)) {
      nft::UdataBuf ud(nftnl_udata_buf_alloc(NFTNL_UDATA_COMMENT_MAXLEN + 16));
      if (!e.comment.empty()) {
        std::string c = e.comment.substr(0, NFTNL_UDATA_COMMENT_MAXLEN - 1);
        nftnl_udata_put_strz(ud.get(), NFTNL_UDATA_SET_ELEM_COMMENT, c.c_str());
      }
      // nft marks an interval that runs to the top of the key space (it has
      // no end element) so that listings print it as a prefix.
      if (open_end) nftnl_udata_put_u32(ud.get(), NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN);
      nftnl_set_elem_set(el.get(), NFTNL_SET_ELEM_USERDATA, nftnl_udata_buf_data(ud.get()),
                         nftnl_udata_buf_len(ud.get()));
    }
    nftnl_set_elem_add(s, el.release());
    if (l.interval && !l.concat) {
      // The end element is the first value after the interval; none when the
      // interval runs to the top of the key space.
      if (!open_end) {
        auto end = new_elem(increment(top));
        nftnl_set_elem_set_u32(end.get(), NFTNL_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        nftnl_set_elem_add(s, end.release());
      }
    }
  }
  return {};
}

nft::Set new_set_handle(TableFamily family, const std::string& table, const std::string& name) {
  nft::Set s(nftnl_set_alloc());
  nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table.c_str());
  nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
  nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, nfproto_of(family));
  return s;
}

// A set keyed by an ND target is declared the way nft declares `typeof
// iifname . @th,64,128`: the expressions that read each part, in nft's
// userdata layout (expression type, then its own attributes), so that `nft
// list` shows the same set either way.
Status put_typeof(nftnl_udata_buf* ud, const Set& decl) {
  constexpr std::uint32_t kExprMeta = 9, kExprPayload = 7, kExprConcat = 13;  // nft's enum expr_types
  auto put_part = [&](KeyType k) -> Status {
    if (k == KeyType::ifname) {
      nftnl_udata_put_u32(ud, 0, kExprMeta);
      auto* data = nftnl_udata_nest_start(ud, 1);
      nftnl_udata_put_u32(ud, 0, NFT_META_IIFNAME);
      nftnl_udata_nest_end(ud, data);
      return {};
    }
    if (k == KeyType::nd_target) {
      nftnl_udata_put_u32(ud, 0, kExprPayload);
      auto* data = nftnl_udata_nest_start(ud, 1);
      nftnl_udata_put_u32(ud, 0, 0);    // no protocol description: raw
      nftnl_udata_put_u32(ud, 1, 0);    // no field
      nftnl_udata_put_u32(ud, 2, 3);    // nft's PROTO_BASE_TRANSPORT_HDR
      nftnl_udata_put_u32(ud, 3, 64);   // bit offset
      nftnl_udata_put_u32(ud, 4, 128);  // bit length
      nftnl_udata_nest_end(ud, data);
      return {};
    }
    return make_error("set " + decl.name + ": a set keyed by an ND target may only add an interface name");
  };
  auto* top = nftnl_udata_nest_start(ud, NFTNL_UDATA_SET_KEY_TYPEOF);
  if (decl.key.size() == 1) {
    if (auto st = put_part(decl.key[0]); !st) return st;
  } else {
    nftnl_udata_put_u32(ud, 0, kExprConcat);
    auto* parts = nftnl_udata_nest_start(ud, 1);
    for (std::size_t i = 0; i < decl.key.size(); ++i) {
      auto* part = nftnl_udata_nest_start(ud, static_cast<std::uint16_t>(i));
      if (auto st = put_part(decl.key[i]); !st) return st;
      nftnl_udata_nest_end(ud, part);
    }
    nftnl_udata_nest_end(ud, parts);
  }
  nftnl_udata_nest_end(ud, top);
  return {};
}

Result<nft::Set> build_set(TableFamily family, const std::string& table, const Set& decl, std::uint32_t id) {
  auto layout = set_layout(decl);
  if (!layout) return layout.error();
  auto s = new_set_handle(family, table, decl.name);
  std::uint32_t flags = 0;
  if (decl.interval) flags |= NFT_SET_INTERVAL;
  if (decl.verdict_map || decl.data_type) flags |= NFT_SET_MAP;
  if (decl.quota_map) flags |= NFT_SET_OBJECT;
  if (decl.timeout) flags |= NFT_SET_TIMEOUT;
  if (decl.dynamic) flags |= NFT_SET_EVAL;
  if (layout->concat && decl.interval) flags |= NFT_SET_CONCAT;  // the kernel wants it only with intervals (pipapo)
  nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, flags);
  std::uint32_t type = 0;
  std::uint32_t key_len = 0;
  for (auto k : decl.key) {
    auto ks = key_spec(k);
    type = (type << kTypeBits) | ks.type_id;
    key_len += layout->concat ? round4(ks.len) : ks.len;
  }
  nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, type);
  nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, key_len);
  nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
  if (decl.quota_map) nftnl_set_set_u32(s.get(), NFTNL_SET_OBJ_TYPE, NFT_OBJECT_QUOTA);
  if (decl.verdict_map) {
    nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
    nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, 0);
  } else if (decl.data_type) {
    nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, key_spec(*decl.data_type).type_id);
    nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, key_spec(*decl.data_type).len);
  }
  // nft gives dynamic sets a size of 65535 when none is set; do the same.
  const std::uint32_t size = decl.size != 0 ? decl.size : (decl.dynamic ? 65535U : 0U);
  if (size != 0) nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, size);
  if (decl.timeout_ms) {
    if (!decl.timeout) return make_error("set '" + decl.name + "' needs the timeout flag for a default timeout");
    nftnl_set_set_u64(s.get(), NFTNL_SET_TIMEOUT, *decl.timeout_ms);
  }
  if (layout->concat && decl.interval) {
    std::vector<std::uint8_t> field_len;
    for (auto len : layout->part_len) field_len.push_back(static_cast<std::uint8_t>(len));
    nftnl_set_set_data(s.get(), NFTNL_SET_DESC_CONCAT, field_len.data(), static_cast<std::uint32_t>(field_len.size()));
  }
  // The key byte order helps `nft list` print values of integer-based types.
  nft::UdataBuf ud(nftnl_udata_buf_alloc(256));
  nftnl_udata_put_u32(ud.get(), NFTNL_UDATA_SET_KEYBYTEORDER, layout->concat ? 0 : key_spec(decl.key[0]).byteorder);
  if (decl.data_type) nftnl_udata_put_u32(ud.get(), NFTNL_UDATA_SET_DATABYTEORDER, key_spec(*decl.data_type).byteorder);
  if (std::find(decl.key.begin(), decl.key.end(), KeyType::nd_target) != decl.key.end()) {
    if (auto st = put_typeof(ud.get(), decl); !st) return st.error();
  }
  nftnl_set_set_data(s.get(), NFTNL_SET_USERDATA, nftnl_udata_buf_data(ud.get()), nftnl_udata_buf_len(ud.get()));
  return s;
}

// ---------------------------------------------------------------------------
// The batch: one message per kernel object, each remembered by sequence
// number so an error can name the op that caused it.

class BatchBuilder {
 public:
  explicit BatchBuilder(std::uint32_t first_seq) : batch_(nftnl_batch_alloc(kPageSize, kMaxMessage)), seq_(first_seq) {
    begin_seq_ = seq_;
    nftnl_batch_begin(static_cast<char*>(nftnl_batch_buffer(batch_.get())), seq_++);
    nftnl_batch_update(batch_.get());
  }

  // Starts a message; the caller fills its payload, then calls done().
  nlmsghdr* start(std::uint16_t type, TableFamily family, std::uint16_t flags, std::string what) {
    descriptions_[seq_] = std::move(what);
    last_seq_ = seq_;
    return nftnl_nlmsg_build_hdr(static_cast<char*>(nftnl_batch_buffer(batch_.get())), type, nfproto_of(family), flags,
                                 seq_++);
  }
  void done() { nftnl_batch_update(batch_.get()); }

  void finish() {
    // Only the last message asks for an ack: the kernel reports every failing
    // message anyway, and this ack proves the whole batch was processed.
    if (last_seq_ != 0) ack_last_message();
    nftnl_batch_end(static_cast<char*>(nftnl_batch_buffer(batch_.get())), seq_++);
    nftnl_batch_update(batch_.get());
  }

  [[nodiscard]] bool empty() const { return descriptions_.empty(); }

  // The last message is wherever the batch holds it now: a message that did
  // not fit its page was copied to a new one by nftnl_batch_update(), so a
  // pointer taken while building it may point at a stale copy.
  void ack_last_message() {
    std::vector<iovec> iov(static_cast<std::size_t>(nftnl_batch_iovec_len(batch_.get())));
    nftnl_batch_iovec(batch_.get(), iov.data(), static_cast<std::uint32_t>(iov.size()));
    for (auto it = iov.rbegin(); it != iov.rend(); ++it) {
      auto* page = static_cast<char*>(it->iov_base);
      nlmsghdr* last = nullptr;
      for (std::size_t off = 0; off + sizeof(nlmsghdr) <= it->iov_len;) {
        auto* h = reinterpret_cast<nlmsghdr*>(page + off);
        if (h->nlmsg_len < sizeof(nlmsghdr)) break;
        last = h;
        off += NLMSG_ALIGN(h->nlmsg_len);
      }
      if (last != nullptr) {
        last->nlmsg_flags |= NLM_F_ACK;
        return;
      }
    }
  }
  nftnl_batch* get() { return batch_.get(); }
  [[nodiscard]] std::uint32_t begin_seq() const { return begin_seq_; }
  [[nodiscard]] std::uint32_t last_seq() const { return last_seq_; }
  [[nodiscard]] std::uint32_t next_seq() const { return seq_; }
  [[nodiscard]] std::string describe(std::uint32_t seq) const {
    auto it = descriptions_.find(seq);
    if (it != descriptions_.end()) return it->second;
    if (seq == begin_seq_) return "batch";
    return "message " + std::to_string(seq);
  }

  static constexpr std::uint32_t kPageSize = 64 * 1024;
  // Larger than any single message we build (elements are chunked).
  static constexpr std::uint32_t kMaxMessage = 256 * 1024;

 private:
  nft::Batch batch_;
  std::uint32_t seq_;
  std::uint32_t begin_seq_ = 0;
  std::uint32_t last_seq_ = 0;
  std::map<std::uint32_t, std::string> descriptions_;
};

constexpr std::size_t kElementsPerMessage = 64;  // keeps NFTA_SET_ELEM_LIST under 64 KiB

std::string op_text(const Op& op) {
  Plan one;
  one.ops.push_back(op);
  std::string s = to_nft_text(one);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  auto nl = s.find('\n');
  if (nl != std::string::npos) s = s.substr(0, nl) + " ...";
  if (s.size() > 300) s = s.substr(0, 297) + "...";
  return s;
}

class PlanEncoder {
 public:
  explicit PlanEncoder(BatchBuilder& b) : b_(b) {}

  Status encode(const Op& op) {
    const std::string where = family_name(op.family) + " " + op.table;
    switch (op.kind) {
      case Op::Kind::add_table:
      case Op::Kind::delete_table: {
        nft::Table t(nftnl_table_alloc());
        nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, op.table.c_str());
        nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, nfproto_of(op.family));
        const bool add = op.kind == Op::Kind::add_table;
        auto* nlh = b_.start(add ? NFT_MSG_NEWTABLE : NFT_MSG_DELTABLE, op.family, add ? NLM_F_CREATE : 0, op_text(op));
        nftnl_table_nlmsg_build_payload(nlh, t.get());
        b_.done();
        return {};
      }
      case Op::Kind::add_set: {
        if (op.set.interval) interval_sets_[table_key(op)].insert(op.set.name);
        auto s = build_set(op.family, op.table, op.set, ++set_id_);
        if (!s) return with_context("set " + op.set.name, s.error());
        Op head;  // the declaration alone: the elements follow in their own messages
        head.kind = op.kind;
        head.family = op.family;
        head.table = op.table;
        head.set = op.set;
        head.set.elements.clear();
        std::string what = op_text(head);
        auto* nlh = b_.start(NFT_MSG_NEWSET, op.family, NLM_F_CREATE, what.substr(0, what.find(" ...")));
        nftnl_set_nlmsg_build_payload(nlh, s->get());
        b_.done();
        return encode_elements(op, op.set, op.set.elements, NFT_MSG_NEWSETELEM, true);
      }
      case Op::Kind::add_elements:
      case Op::Kind::delete_elements:
      case Op::Kind::destroy_elements: {
        if (op.set.key.empty()) {
          return make_error("'" + op_text(op) + "': op.set must declare the set's key and flags");
        }
        Set decl = op.set;
        decl.name = op.name;
        std::uint16_t type = kNftMsgDestroySetElem;
        if (op.kind == Op::Kind::add_elements) type = NFT_MSG_NEWSETELEM;
        if (op.kind == Op::Kind::delete_elements) type = NFT_MSG_DELSETELEM;
        return encode_elements(op, decl, op.elements, type, false);
      }
      case Op::Kind::flush_set: {
        auto s = new_set_handle(op.family, op.table, op.name);
        auto* nlh = b_.start(NFT_MSG_DELSETELEM, op.family, 0, op_text(op));
        nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
        b_.done();
        return {};
      }
      case Op::Kind::delete_set: {
        auto s = new_set_handle(op.family, op.table, op.name);
        auto* nlh = b_.start(NFT_MSG_DELSET, op.family, 0, op_text(op));
        nftnl_set_nlmsg_build_payload(nlh, s.get());
        b_.done();
        return {};
      }
      case Op::Kind::add_quota:
      case Op::Kind::delete_quota: {
        nft::Obj o(nftnl_obj_alloc());
        const bool add = op.kind == Op::Kind::add_quota;
        const std::string& name = add ? op.quota.name : op.name;
        nftnl_obj_set_str(o.get(), NFTNL_OBJ_TABLE, op.table.c_str());
        nftnl_obj_set_str(o.get(), NFTNL_OBJ_NAME, name.c_str());
        nftnl_obj_set_u32(o.get(), NFTNL_OBJ_FAMILY, nfproto_of(op.family));
        nftnl_obj_set_u32(o.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_QUOTA);
        if (add) {
          nftnl_obj_set_u64(o.get(), NFTNL_OBJ_QUOTA_BYTES, op.quota.bytes);
          nftnl_obj_set_u64(o.get(), NFTNL_OBJ_QUOTA_CONSUMED, op.quota.consumed);
          nftnl_obj_set_u32(o.get(), NFTNL_OBJ_QUOTA_FLAGS, NFT_QUOTA_F_INV);
        }
        auto* nlh = b_.start(add ? NFT_MSG_NEWOBJ : NFT_MSG_DELOBJ, op.family, add ? NLM_F_CREATE : 0, op_text(op));
        nftnl_obj_nlmsg_build_payload(nlh, o.get());
        b_.done();
        return {};
      }
      case Op::Kind::add_chain: {
        nft::Chain c(nftnl_chain_alloc());
        nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, op.table.c_str());
        nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, op.chain.name.c_str());
        nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, nfproto_of(op.family));
        if (op.chain.base) {
          auto hook = hook_number(op.family, op.chain.base->hook);
          if (!hook) return with_context("chain " + op.chain.name, hook.error());
          nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, *hook);
          nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, op.chain.base->priority);
          nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, op.chain.base->nat ? "nat" : "filter");
          nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, op.chain.base->policy_drop ? NF_DROP : NF_ACCEPT);
        }
        std::string what = op_text(op);
        auto* nlh = b_.start(NFT_MSG_NEWCHAIN, op.family, NLM_F_CREATE, what.substr(0, what.find(" ...")));
        nftnl_chain_nlmsg_build_payload(nlh, c.get());
        b_.done();
        for (const auto& r : op.chain.rules) {
          if (auto st = encode_rule(op.family, op.table, op.chain.name, r); !st) return st;
        }
        return {};
      }
      case Op::Kind::delete_chain:
      case Op::Kind::flush_chain: {
        const bool del = op.kind == Op::Kind::delete_chain;
        if (del) {
          nft::Chain c(nftnl_chain_alloc());
          nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, op.table.c_str());
          nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, op.name.c_str());
          nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, nfproto_of(op.family));
          auto* nlh = b_.start(NFT_MSG_DELCHAIN, op.family, 0, op_text(op));
          nftnl_chain_nlmsg_build_payload(nlh, c.get());
        } else {
          nft::Rule r(nftnl_rule_alloc());
          nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, op.table.c_str());
          nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, op.name.c_str());
          nftnl_rule_set_u32(r.get(), NFTNL_RULE_FAMILY, nfproto_of(op.family));
          auto* nlh = b_.start(NFT_MSG_DELRULE, op.family, 0, op_text(op));
          nftnl_rule_nlmsg_build_payload(nlh, r.get());
        }
        b_.done();
        return {};
      }
      case Op::Kind::add_rule: return encode_rule(op.family, op.table, op.name, op.rule);
    }
    return make_error("unknown op");
  }

 private:
  static Result<std::uint32_t> hook_number(TableFamily family, BaseHook::Hook h) {
    if (family == TableFamily::arp) {
      if (h == BaseHook::Hook::input) return static_cast<std::uint32_t>(NF_ARP_IN);
      if (h == BaseHook::Hook::output) return static_cast<std::uint32_t>(NF_ARP_OUT);
      return make_error("arp tables only have input and output hooks");
    }
    switch (h) {
      case BaseHook::Hook::prerouting: return static_cast<std::uint32_t>(NF_INET_PRE_ROUTING);
      case BaseHook::Hook::input: return static_cast<std::uint32_t>(NF_INET_LOCAL_IN);
      case BaseHook::Hook::forward: return static_cast<std::uint32_t>(NF_INET_FORWARD);
      case BaseHook::Hook::output: return static_cast<std::uint32_t>(NF_INET_LOCAL_OUT);
      case BaseHook::Hook::postrouting: return static_cast<std::uint32_t>(NF_INET_POST_ROUTING);
    }
    return make_error("unknown hook");
  }

  Status encode_elements(const Op& op, const Set& decl, const std::vector<SetElement>& elements, std::uint16_t type,
                         bool leading_zero_end) {
    const bool del = type != NFT_MSG_NEWSETELEM;
    // What each message shows in an error: the op with only its chunk (not
    // a copy of the whole op per chunk: a set added with 100,000 elements
    // made that quadratic).
    Op shown;
    shown.kind = type == NFT_MSG_NEWSETELEM   ? Op::Kind::add_elements
                 : type == NFT_MSG_DELSETELEM ? Op::Kind::delete_elements
                                              : Op::Kind::destroy_elements;
    shown.family = op.family;
    shown.table = op.table;
    shown.name = decl.name;
    shown.set = decl;
    shown.set.elements.clear();
    for (std::size_t first = 0; first < elements.size(); first += kElementsPerMessage) {
      std::vector<SetElement> chunk(
          elements.begin() + static_cast<std::ptrdiff_t>(first),
          elements.begin() + static_cast<std::ptrdiff_t>(std::min(elements.size(), first + kElementsPerMessage)));
      auto s = new_set_handle(op.family, op.table, decl.name);
      if (auto st = add_elements_to(s.get(), decl, chunk, del, leading_zero_end && first == 0); !st) {
        return with_context("set " + decl.name, st.error());
      }
      shown.elements = std::move(chunk);
      auto* nlh = b_.start(type, op.family, del ? 0 : NLM_F_CREATE, op_text(shown));
      nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
      b_.done();
    }
    return {};
  }

  Status encode_rule(TableFamily family, const std::string& table, const std::string& chain, const Rule& rule) {
    nft::Rule r(nftnl_rule_alloc());
    nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, table.c_str());
    nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, chain.c_str());
    nftnl_rule_set_u32(r.get(), NFTNL_RULE_FAMILY, nfproto_of(family));
    Op shown;
    shown.kind = Op::Kind::add_rule;
    shown.family = family;
    shown.table = table;
    shown.name = chain;
    shown.rule = rule;
    const std::string what = op_text(shown);
    Op where;
    where.family = family;
    where.table = table;
    RuleCompiler rc(family, r.get(), interval_sets_[table_key(where)]);
    if (auto st = rc.compile(rule); !st) return with_context("'" + what + "'", st.error());
    if (!rule.comment.empty()) {
      nft::UdataBuf ud(nftnl_udata_buf_alloc(NFTNL_UDATA_COMMENT_MAXLEN + 8));
      std::string c = rule.comment.substr(0, NFTNL_UDATA_COMMENT_MAXLEN - 1);
      nftnl_udata_put_strz(ud.get(), NFTNL_UDATA_RULE_COMMENT, c.c_str());
      nftnl_rule_set_data(r.get(), NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud.get()), nftnl_udata_buf_len(ud.get()));
    }
    auto* nlh = b_.start(NFT_MSG_NEWRULE, family, NLM_F_CREATE | NLM_F_APPEND, what);
    nftnl_rule_nlmsg_build_payload(nlh, r.get());
    b_.done();
    return {};
  }

  static std::string table_key(const Op& op) { return family_name(op.family) + " " + op.table; }

  BatchBuilder& b_;
  std::uint32_t set_id_ = 0;
  std::map<std::string, IntervalSets> interval_sets_;
};

struct KernelError {
  std::uint32_t seq = 0;
  int err = 0;
  std::string extack;
};

// Reads one datagram of replies; false when nothing more is queued.
Result<bool> read_replies(int fd, bool block, std::vector<KernelError>& errors, std::uint32_t last_seq,
                          bool& last_seen) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE * 4);
  ssize_t n = recv(fd, buf.data(), buf.size(), block ? 0 : MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;
    return make_sys_error("reading the kernel's answer to the nftables batch");
  }
  auto* nlh = reinterpret_cast<nlmsghdr*>(buf.data());
  int len = static_cast<int>(n);
  while (mnl_nlmsg_ok(nlh, len)) {
    if (nlh->nlmsg_type == NLMSG_ERROR) {
      auto* e = static_cast<nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
      if (e->msg.nlmsg_seq == last_seq) last_seen = true;
      if (e->error != 0) {
        KernelError ke{e->msg.nlmsg_seq, -e->error, {}};
        if ((nlh->nlmsg_flags & NLM_F_ACK_TLVS) != 0) {
          // With NETLINK_CAP_ACK the echoed request is only its header.
          std::size_t off = sizeof(nlmsgerr);
          if ((nlh->nlmsg_flags & NLM_F_CAPPED) == 0) off += e->msg.nlmsg_len - sizeof(nlmsghdr);
          mnl_attr_parse(
              nlh, static_cast<unsigned>(off),
              [](const nlattr* a, void* data) -> int {
                if (mnl_attr_get_type(a) == NLMSGERR_ATTR_MSG && mnl_attr_validate(a, MNL_TYPE_NUL_STRING) >= 0) {
                  *static_cast<std::string*>(data) = mnl_attr_get_str(a);
                }
                return MNL_CB_OK;
              },
              &ke.extack);
        }
        errors.push_back(std::move(ke));
      }
    }
    nlh = mnl_nlmsg_next(nlh, &len);
  }
  return true;
}

}  // namespace

NftBackend::NftBackend(nft::MnlSocket sock) : sock_(std::move(sock)) {}

Result<NftBackend> NftBackend::open() {
  nft::MnlSocket sock(mnl_socket_open(NETLINK_NETFILTER));
  if (!sock) return make_sys_error("opening a NETLINK_NETFILTER socket");
  if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0) return make_sys_error("binding the netfilter socket");
  int on = 1;
  // Short acks (no echoed request) and the kernel's own error text.
  mnl_socket_setsockopt(sock.get(), NETLINK_CAP_ACK, &on, sizeof on);
  mnl_socket_setsockopt(sock.get(), NETLINK_EXT_ACK, &on, sizeof on);
  int rcvbuf = 4 * 1024 * 1024;
  if (setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0) {
    setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  }
  timeval tv{5, 0};
  setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  NftBackend b(std::move(sock));
  b.seq_ = static_cast<std::uint32_t>(time(nullptr));
  return b;
}

std::uint32_t NftBackend::port_id() const { return mnl_socket_get_portid(sock_.get()); }

Status NftBackend::apply(const Plan& plan) {
  if (plan.ops.empty()) return {};
  // Element ops need their set's layout. Take it from the op, from a set the
  // plan itself adds, or else from the kernel.
  std::map<std::string, Set> declared;
  auto key_of = [](const Op& op, const std::string& name) {
    return family_name(op.family) + " " + op.table + " " + name;
  };
  for (const auto& op : plan.ops) {
    if (op.kind == Op::Kind::add_set) declared[key_of(op, op.set.name)] = op.set;
  }
  std::vector<Op> resolved;
  const std::vector<Op>* ops = &plan.ops;
  for (std::size_t i = 0; i < plan.ops.size(); ++i) {
    const Op& op = plan.ops[i];
    const bool element_op = op.kind == Op::Kind::add_elements || op.kind == Op::Kind::delete_elements ||
                            op.kind == Op::Kind::destroy_elements;
    if (!element_op || !op.set.key.empty()) continue;
    if (resolved.empty()) resolved = plan.ops;
    auto it = declared.find(key_of(op, op.name));
    if (it == declared.end()) {
      auto decl = kernel_set(op.family, op.table, op.name);
      if (!decl) return with_context("reading set " + op.name + " for '" + op_text(op) + "'", decl.error());
      it = declared.emplace(key_of(op, op.name), std::move(*decl)).first;
    }
    resolved[i].set = it->second;
    resolved[i].set.elements.clear();
    ops = &resolved;
  }
  BatchBuilder batch(seq_);
  PlanEncoder enc(batch);
  for (const auto& op : *ops) {
    if (auto st = enc.encode(op); !st) return with_context("building the nftables batch", st.error());
  }
  if (batch.empty()) return {};
  batch.finish();
  seq_ = batch.next_seq();

  const int fd = mnl_socket_get_fd(sock_.get());
  std::vector<iovec> iov(static_cast<std::size_t>(nftnl_batch_iovec_len(batch.get())));
  nftnl_batch_iovec(batch.get(), iov.data(), static_cast<std::uint32_t>(iov.size()));
  std::size_t total = 0;
  for (const auto& v : iov) total += v.iov_len;
  int sndbuf = static_cast<int>(total + 64 * 1024);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  }
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  msghdr msg{};
  msg.msg_name = &kernel;
  msg.msg_namelen = sizeof kernel;
  msg.msg_iov = iov.data();
  msg.msg_iovlen = iov.size();
  if (sendmsg(fd, &msg, 0) < 0)
    return make_sys_error("sending the nftables batch (" + std::to_string(total) + " bytes)");

  // The kernel handles the batch inside sendmsg(), so every answer is queued
  // by now: drain them without blocking.
  std::vector<KernelError> errors;
  bool last_seen = false;
  for (;;) {
    auto more = read_replies(fd, false, errors, batch.last_seq(), last_seen);
    if (!more) return more.error();
    if (!*more) break;
  }
  if (errors.empty()) {
    if (last_seen) return {};
    return make_error("the kernel did not acknowledge the nftables batch; its state is unknown, re-read it");
  }
  std::sort(errors.begin(), errors.end(), [](const auto& a, const auto& b) { return a.seq < b.seq; });
  const KernelError& first = errors.front();
  std::string message = "kernel refused '" + batch.describe(first.seq) + "'";
  if (!first.extack.empty()) message += " (" + first.extack + ")";
  if (errors.size() > 1) {
    message += " [and " + std::to_string(errors.size() - 1) + " later message(s) of the same transaction]";
  }
  return make_sys_error(message, first.err);
}

Status NftBackend::request(nlmsghdr* nlh, const std::string& what,
                           const std::function<Status(const nlmsghdr*)>& on_reply) {
  const std::uint32_t seq = nlh->nlmsg_seq;
  if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0) return make_sys_error("asking for " + what);
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE * 4);
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(sock_.get(), buf.data(), buf.size());
    if (n < 0) return make_sys_error("reading " + what);
    const auto* r = reinterpret_cast<const nlmsghdr*>(buf.data());
    int len = static_cast<int>(n);
    bool done = false;
    while (mnl_nlmsg_ok(r, len)) {
      if (r->nlmsg_seq == seq) {
        if (r->nlmsg_type == NLMSG_DONE) {
          done = true;
        } else if (r->nlmsg_type == NLMSG_ERROR) {
          const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(r));
          if (e->error != 0) return make_sys_error(what, -e->error);
          done = true;
        } else if (auto st = on_reply(r); !st) {
          return st;
        }
      }
      r = mnl_nlmsg_next(r, &len);
    }
    if (done) return {};
  }
}

Result<Set> NftBackend::kernel_set(TableFamily family, const std::string& table, const std::string& name) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  auto query = new_set_handle(family, table, name);
  const std::uint32_t seq = seq_++;
  auto* nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETSET, nfproto_of(family), NLM_F_ACK, seq);
  nftnl_set_nlmsg_build_payload(nlh, query.get());
  nft::Set found;
  auto st = request(nlh, "set " + name + " in table " + table, [&](const nlmsghdr* r) -> Status {
    if ((r->nlmsg_type & 0xffU) != NFT_MSG_NEWSET) return {};
    found.reset(nftnl_set_alloc());
    if (nftnl_set_nlmsg_parse(r, found.get()) < 0) return make_sys_error("parsing set " + name);
    return {};
  });
  if (!st) return st.error();
  if (!found) return make_error("the kernel sent no description of set " + name);
  Set decl;
  decl.name = name;
  const std::uint32_t flags = nftnl_set_get_u32(found.get(), NFTNL_SET_FLAGS);
  decl.interval = (flags & NFT_SET_INTERVAL) != 0;
  decl.timeout = (flags & NFT_SET_TIMEOUT) != 0;
  decl.dynamic = (flags & NFT_SET_EVAL) != 0;
  decl.verdict_map = (flags & NFT_SET_MAP) != 0 && nftnl_set_is_set(found.get(), NFTNL_SET_DATA_TYPE) &&
                     nftnl_set_get_u32(found.get(), NFTNL_SET_DATA_TYPE) == NFT_DATA_VERDICT;
  decl.quota_map = (flags & NFT_SET_OBJECT) != 0;
  if ((flags & NFT_SET_MAP) != 0 && !decl.verdict_map) {
    const std::uint32_t data = nftnl_set_get_u32(found.get(), NFTNL_SET_DATA_TYPE);
    for (KeyType k : {KeyType::classid, KeyType::mark}) {
      if (data == key_spec(k).type_id) decl.data_type = k;
    }
    if (!decl.data_type) {
      return make_error("map " + name + " has value type id " + std::to_string(data) + ", unknown to this backend");
    }
  }
  // Concatenated type ids are 6 bits each, the first part in the highest bits.
  std::uint32_t type = nftnl_set_get_u32(found.get(), NFTNL_SET_KEY_TYPE);
  std::vector<KeyType> key;
  const KeyType all[] = {KeyType::ipv4_addr, KeyType::ipv6_addr,  KeyType::inet_proto, KeyType::inet_service,
                         KeyType::ifname,    KeyType::ether_addr, KeyType::mark,       KeyType::nd_target,
                         KeyType::ct_state,  KeyType::ct_dir};
  while (type != 0) {
    const std::uint32_t id = type & ((1U << kTypeBits) - 1U);
    auto it = std::find_if(std::begin(all), std::end(all), [id](KeyType k) { return key_spec(k).type_id == id; });
    if (it == std::end(all)) {
      return make_error("set " + name + " has key type id " + std::to_string(id) + ", unknown to this backend");
    }
    key.insert(key.begin(), *it);
    type >>= kTypeBits;
  }
  if (key.empty()) return make_error("set " + name + " has no key type");
  decl.key = std::move(key);
  return decl;
}

Result<std::vector<Bytes>> NftBackend::element_keys(TableFamily family, const std::string& table,
                                                    const std::string& name) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  auto query = new_set_handle(family, table, name);
  const std::uint32_t seq = seq_++;
  auto* nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETSETELEM, nfproto_of(family), NLM_F_DUMP, seq);
  nftnl_set_elems_nlmsg_build_payload(nlh, query.get());
  std::vector<Bytes> keys;
  auto st = request(nlh, "elements of set " + name + " in table " + table, [&](const nlmsghdr* r) -> Status {
    if ((r->nlmsg_type & 0xffU) != NFT_MSG_NEWSETELEM) return {};
    nft::Set part(nftnl_set_alloc());
    if (nftnl_set_elems_nlmsg_parse(r, part.get()) < 0) return make_sys_error("parsing elements of " + name);
    auto* it = nftnl_set_elems_iter_create(part.get());
    if (it == nullptr) return make_error("out of memory reading the elements of " + name);
    for (auto* el = nftnl_set_elems_iter_next(it); el != nullptr; el = nftnl_set_elems_iter_next(it)) {
      std::uint32_t klen = 0;
      const auto* k = static_cast<const std::uint8_t*>(nftnl_set_elem_get(el, NFTNL_SET_ELEM_KEY, &klen));
      if (k != nullptr) keys.emplace_back(k, k + klen);
    }
    nftnl_set_elems_iter_destroy(it);
    return {};
  });
  if (!st) return st.error();
  return keys;
}

Result<std::size_t> NftBackend::purge_elements(TableFamily family, const std::string& table, const Set& decl,
                                               const Bytes& key_prefix) {
  auto keys = element_keys(family, table, decl.name);
  if (!keys) return keys.error();
  const bool concat = decl.key.size() > 1;
  std::vector<SetElement> doomed;
  for (const auto& k : *keys) {
    if (k.size() < key_prefix.size() || !std::equal(key_prefix.begin(), key_prefix.end(), k.begin())) continue;
    // The kernel's key is the parts back to back (padded to 4 bytes each
    // when concatenated): split it the way add_elements_to() joins it.
    SetElement e;
    std::size_t off = 0;
    for (auto kt : decl.key) {
      const std::uint32_t part = key_spec(kt).len;
      if (off + part > k.size()) break;
      e.key.push_back(
          {Bytes(k.begin() + static_cast<std::ptrdiff_t>(off), k.begin() + static_cast<std::ptrdiff_t>(off + part)),
           {}});
      off += concat ? round4(part) : part;
    }
    if (e.key.size() == decl.key.size()) doomed.push_back(std::move(e));
  }
  if (doomed.empty()) return std::size_t{0};
  // Destroy: an element that timed out since the dump is no error.
  Op op;
  op.kind = Op::Kind::destroy_elements;
  op.family = family;
  op.table = table;
  op.name = decl.name;
  op.set = decl;
  op.set.elements.clear();
  op.elements = std::move(doomed);
  const std::size_t count = op.elements.size();
  Plan plan;
  plan.ops.push_back(std::move(op));
  if (auto st = apply(plan); !st) return st.error();
  return count;
}

Result<bool> NftBackend::table_exists(TableFamily family, const std::string& name) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nft::Table t(nftnl_table_alloc());
  nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, name.c_str());
  const std::uint32_t seq = seq_++;
  auto* nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETTABLE, nfproto_of(family), NLM_F_ACK, seq);
  nftnl_table_nlmsg_build_payload(nlh, t.get());
  bool found = false;
  auto st = request(nlh, "table " + name, [&](const nlmsghdr* r) -> Status {
    if ((r->nlmsg_type & 0xffU) == NFT_MSG_NEWTABLE) found = true;
    return {};
  });
  if (!st) {
    if (st.error().sys_errno == ENOENT) return false;
    return st.error();
  }
  return found;
}

Result<QuotaObject> NftBackend::read_quota(TableFamily family, const std::string& table, const std::string& name,
                                           bool reset) {
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nft::Obj query(nftnl_obj_alloc());
  nftnl_obj_set_str(query.get(), NFTNL_OBJ_TABLE, table.c_str());
  nftnl_obj_set_str(query.get(), NFTNL_OBJ_NAME, name.c_str());
  nftnl_obj_set_u32(query.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_QUOTA);
  const std::uint32_t seq = seq_++;
  auto* nlh = nftnl_nlmsg_build_hdr(buf.data(), reset ? NFT_MSG_GETOBJ_RESET : NFT_MSG_GETOBJ, nfproto_of(family),
                                    NLM_F_ACK, seq);
  nftnl_obj_nlmsg_build_payload(nlh, query.get());
  std::optional<QuotaObject> found;
  auto st = request(nlh, "quota " + name + " in table " + table, [&](const nlmsghdr* r) -> Status {
    if ((r->nlmsg_type & 0xffU) != NFT_MSG_NEWOBJ) return {};
    nft::Obj o(nftnl_obj_alloc());
    if (nftnl_obj_nlmsg_parse(r, o.get()) < 0) return make_sys_error("parsing quota " + name);
    found = QuotaObject{name, nftnl_obj_get_u64(o.get(), NFTNL_OBJ_QUOTA_BYTES),
                        nftnl_obj_get_u64(o.get(), NFTNL_OBJ_QUOTA_CONSUMED)};
    return {};
  });
  if (!st) return st.error();
  if (!found) return make_error("the kernel sent no quota " + name);
  return *found;
}

}  // namespace sg::netpolicy
