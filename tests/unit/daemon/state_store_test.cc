#include "surrogated/state_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>

namespace sg {
namespace {

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sg-state-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string db() const { return dir_ + "/state.db"; }

  // An open hole of VM 1 from authcert "a1", until 5000.
  static HoleRecord authcert_hole() {
    HoleRecord h;
    h.vm_id = 1;
    h.vm_name = "sg1";
    h.destination = "203.0.113.18/32";
    h.expires = 5000;
    h.origin = "authcert";
    h.authcert_id = "a1";
    return h;
  }

  static VmRecord vm(int slot, const std::string& owner) {
    VmRecord v;
    v.owner_fp = owner;
    v.owner_key_pem = "PEM";
    v.template_name = "small";
    v.slot = slot;
    v.ipv4 = "198.51.100." + std::to_string(slot * 4 + 2);
    v.mac = "52:54:00:00:00:0" + std::to_string(slot);
    v.created = 1000;
    v.expires = 2000;
    return v;
  }
  std::string dir_;
};

TEST_F(StateStoreTest, InsertAssignsIncreasingIdsAndNames) {
  auto s = StateStore::open(db());
  ASSERT_TRUE(s.ok()) << s.error().describe();
  auto a = vm(0, "sha256:a");
  auto b = vm(1, "sha256:b");
  ASSERT_TRUE(s->insert(a).ok());
  ASSERT_TRUE(s->insert(b).ok());
  EXPECT_EQ(a.name, "sg" + std::to_string(a.id));
  EXPECT_GT(b.id, a.id);
  auto all = s->active();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2U);
  EXPECT_EQ((*all)[1].owner_fp, "sha256:b");
  EXPECT_EQ((*all)[1].ipv4, "198.51.100.6");
}

TEST_F(StateStoreTest, ReleaseFreesSlotRecordsTimeAndNeverReusesIds) {
  std::int64_t first_id = 0;
  {
    auto s = StateStore::open(db());
    auto a = vm(0, "sha256:a");
    ASSERT_TRUE(s->insert(a).ok());
    first_id = a.id;
    ASSERT_TRUE(s->mark_released(a.id, 1500, "test").ok());
    EXPECT_TRUE(s->slots_in_use()->empty());
    EXPECT_EQ(s->slot_release_times()->at(0), 1500);
    EXPECT_FALSE(s->find_active(a.name)->has_value());
  }
  // Reopen: the state survived, and the next id is larger (ids are ct marks
  // and flow-log keys: reuse would blame the wrong client).
  auto s = StateStore::open(db());
  ASSERT_TRUE(s.ok());
  auto b = vm(0, "sha256:b");
  ASSERT_TRUE(s->insert(b).ok());
  EXPECT_GT(b.id, first_id);
  EXPECT_EQ(*s->slots_in_use(), std::set<int>{0});
}

TEST_F(StateStoreTest, TwoActiveVmsCannotShareASlot) {
  auto s = StateStore::open(db());
  auto a = vm(3, "sha256:a");
  auto b = vm(3, "sha256:b");
  ASSERT_TRUE(s->insert(a).ok());
  EXPECT_FALSE(s->insert(b).ok());
}

TEST_F(StateStoreTest, UpdatePersistsStateAndTrust) {
  auto s = StateStore::open(db());
  auto a = vm(0, "sha256:a");
  ASSERT_TRUE(s->insert(a).ok());
  a.state = "running";
  a.trust_level = "trusted";
  a.policy_version = "sha256:1234";
  ASSERT_TRUE(s->update(a).ok());
  auto f = s->find_active(a.name);
  ASSERT_TRUE(f.ok() && f->has_value());
  EXPECT_EQ((*f)->state, "running");
  EXPECT_EQ((*f)->trust_level, "trusted");
  EXPECT_EQ((*f)->policy_version, "sha256:1234");
}

TEST_F(StateStoreTest, UnwritableLocationIsAClearError) {
  auto s = StateStore::open("/nonexistent-dir/state.db");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("state_dir"), std::string::npos);
}

TEST_F(StateStoreTest, UsesWal) {
  auto s = StateStore::open(db());
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(std::filesystem::exists(db() + "-wal"));
}

TEST_F(StateStoreTest, HoleRatesAndClassesRoundTripAndOldStoresGainTheColumns) {
  // A store from before holes had rates: the old holes table, one open hole.
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(db().c_str(), &raw), SQLITE_OK);
    const char* old =
        "CREATE TABLE holes (id INTEGER PRIMARY KEY AUTOINCREMENT, vm_id INTEGER NOT NULL, vm_name TEXT NOT NULL,"
        "  destination TEXT NOT NULL, protocol INTEGER NOT NULL, port_first INTEGER NOT NULL,"
        "  port_last INTEGER NOT NULL, expires INTEGER NOT NULL, origin TEXT NOT NULL,"
        "  authcert_id TEXT NOT NULL DEFAULT '', created INTEGER NOT NULL,"
        "  removed INTEGER NOT NULL DEFAULT 0, removed_reason TEXT NOT NULL DEFAULT '');"
        "INSERT INTO holes (vm_id, vm_name, destination, protocol, port_first, port_last, expires, origin, created)"
        "  VALUES (1, 'sg1', '203.0.113.9/32', 6, 443, 443, 5000, 'admin', 1000);";
    ASSERT_EQ(sqlite3_exec(raw, old, nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(raw);
  }
  auto s = StateStore::open(db());
  ASSERT_TRUE(s.ok()) << s.error().describe();
  auto holes = s->open_holes(2000);
  ASSERT_TRUE(holes.ok()) << holes.error().describe();
  ASSERT_EQ(holes->size(), 1U);  // kept through the upgrade
  EXPECT_EQ((*holes)[0].rate_bps, 0U);
  EXPECT_EQ((*holes)[0].tc_minor, 0U);
  HoleRecord rated = authcert_hole();
  rated.rate_bps = 3'000'000;
  rated.tc_minor = 0x8001;
  ASSERT_TRUE(s->insert_hole(rated).ok());
  holes = s->open_holes(2000, 1);
  ASSERT_TRUE(holes.ok());
  ASSERT_EQ(holes->size(), 2U);
  EXPECT_EQ((*holes)[1].rate_bps, 3'000'000U);
  EXPECT_EQ((*holes)[1].tc_minor, 0x8001U);
  auto used = s->used_hole_minors(2000);
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(*used, std::vector<std::uint32_t>{0x8001});
  // Expired or removed holes free their class.
  EXPECT_TRUE(s->used_hole_minors(6000)->empty());
  ASSERT_TRUE(s->remove_hole(rated.id, 2500, "test").ok());
  EXPECT_TRUE(s->used_hole_minors(3000)->empty());
}

TEST_F(StateStoreTest, AuthcertBodiesAreKeptWhileTheirHolesAreOpen) {
  auto s = StateStore::open(db());
  ASSERT_TRUE(s.ok()) << s.error().describe();
  HoleRecord h = authcert_hole();
  ASSERT_TRUE(s->insert_hole(h).ok());
  const std::string der{'\x30', '\x82', '\0', '\x01', 'b', 'i', 'n'};  // bytes with a NUL survive
  ASSERT_TRUE(s->record_authcert_body("a1", 1, der, 1000).ok());
  ASSERT_TRUE(s->record_authcert_body("gone", 1, "x", 1000).ok());  // no open hole
  auto in_force = s->authcerts_in_force(2000);
  ASSERT_TRUE(in_force.ok());
  ASSERT_EQ(in_force->size(), 1U);
  EXPECT_EQ((*in_force)[0].id, "a1");
  EXPECT_EQ((*in_force)[0].body, der);
  EXPECT_EQ(*s->prune_authcert_bodies(2000), 1U);  // "gone"
  EXPECT_EQ(*s->prune_authcert_bodies(6000), 1U);  // a1's hole expired
  EXPECT_TRUE(s->authcerts_in_force(2000)->empty());
}

}  // namespace
}  // namespace sg
