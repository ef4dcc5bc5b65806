// AuditLog: append, list, verify, and tampering by someone with write access
// to the file (who first drops the append-only triggers).
#include "surrogated/audit_log.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "surrogated/flow_log.h"

namespace sg {
namespace {

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sg-audit-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/flows.db";
    auto r = AuditLog::open(path_);
    ASSERT_TRUE(r.ok()) << r.error().describe();
    log_.emplace(std::move(r).value());
  }
  void TearDown() override {
    log_.reset();
    std::filesystem::remove_all(dir_);
  }

  void append_rows(int n) {
    for (int i = 1; i <= n; ++i) {
      auto r = log_->append("uid 0", i % 2 ? "allocate" : "release", "sg" + std::to_string(i),
                            nlohmann::json{{"template", "tiny"}, {"n", i}}, 1'700'000'000'000 + i * 1000);
      ASSERT_TRUE(r.ok()) << r.error().describe();
      EXPECT_EQ(r->seq, i);
    }
  }

  // What a tamperer with the file can do: the triggers only stop accidents.
  void tamper(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    const std::string all = "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; " + sql;
    EXPECT_EQ(sqlite3_exec(db, all.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(db);
  }

  VerifyReport verify() {
    auto r = log_->verify();
    EXPECT_TRUE(r.ok()) << r.error().describe();
    return r.ok() ? *r : VerifyReport{};
  }

  std::string dir_, path_;
  std::optional<AuditLog> log_;
};

TEST_F(AuditLogTest, AppendListAndVerify) {
  EXPECT_TRUE(verify().ok);
  append_rows(5);
  auto rows = log_->list(0);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 5U);
  EXPECT_EQ((*rows)[0].prev_hash, std::string(64, '0'));
  EXPECT_EQ((*rows)[1].prev_hash, (*rows)[0].hash);
  EXPECT_EQ((*rows)[2].detail, R"({"n":3,"template":"tiny"})");
  EXPECT_EQ(log_->list(1'700'000'000'000 + 4000)->size(), 2U);
  EXPECT_EQ(log_->list(0, 2)->size(), 2U);
  auto report = verify();
  EXPECT_TRUE(report.ok) << report.message;
  EXPECT_EQ(report.rows_checked, 5);
  EXPECT_EQ(report.head_hash, (*rows)[4].hash);
  nlohmann::json j = (*rows)[2];
  EXPECT_EQ(j["detail"]["template"], "tiny");
  EXPECT_EQ(j["action"], "allocate");
}

TEST_F(AuditLogTest, TheTableRefusesUpdatesAndDeletes) {
  append_rows(2);
  EXPECT_NE(sqlite3_exec(log_->handle(), "UPDATE audit SET actor='x' WHERE seq=1", nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_NE(sqlite3_exec(log_->handle(), "DELETE FROM audit WHERE seq=2", nullptr, nullptr, nullptr), SQLITE_OK);
  EXPECT_TRUE(verify().ok);
}

TEST_F(AuditLogTest, AModifiedRowIsNamed) {
  append_rows(20);
  tamper(R"(UPDATE audit SET detail='{"n":17,"template":"huge"}' WHERE seq=17)");
  auto report = verify();
  EXPECT_FALSE(report.ok);
  ASSERT_TRUE(report.first_bad_seq.has_value());
  EXPECT_EQ(*report.first_bad_seq, 17);
  EXPECT_NE(report.message.find("row 17 was modified"), std::string::npos) << report.message;
}

TEST_F(AuditLogTest, AModifiedRowWithARecomputedHashBreaksTheNextLink) {
  append_rows(5);
  auto rows = *log_->list(0);
  auto forged = rows[2];
  forged.actor = "uid 1000";
  forged.hash = audit_row_hash(forged);
  tamper("UPDATE audit SET actor='uid 1000', hash='" + forged.hash + "' WHERE seq=3");
  auto report = verify();
  EXPECT_FALSE(report.ok);
  EXPECT_EQ(*report.first_bad_seq, 4);
  EXPECT_NE(report.message.find("row 3 was modified"), std::string::npos) << report.message;
}

TEST_F(AuditLogTest, ARowRemovedFromTheMiddleIsNamed) {
  append_rows(6);
  tamper("DELETE FROM audit WHERE seq=4");
  auto report = verify();
  EXPECT_FALSE(report.ok);
  EXPECT_EQ(*report.first_bad_seq, 4);
  EXPECT_NE(report.message.find("row 4 was removed"), std::string::npos) << report.message;
}

TEST_F(AuditLogTest, ARowRemovedFromTheEndIsNoticedThroughTheHead) {
  append_rows(6);
  tamper("DELETE FROM audit WHERE seq=6");
  auto report = verify();
  EXPECT_FALSE(report.ok);
  EXPECT_EQ(*report.first_bad_seq, 6);
  EXPECT_NE(report.message.find("removed from the end"), std::string::npos) << report.message;
  EXPECT_NE(report.message.find("chain head says the log has 6 rows"), std::string::npos) << report.message;
  // Appending afterwards does not hide the hole.
  ASSERT_TRUE(log_->append("uid 0", "stop", "sg1", nlohmann::json::object(), 1'800'000'000'000).ok());
  report = verify();
  EXPECT_FALSE(report.ok);
  EXPECT_EQ(*report.first_bad_seq, 6);
}

TEST_F(AuditLogTest, ADeletedHeadIsNoticed) {
  append_rows(3);
  tamper("DELETE FROM audit WHERE seq=3; DELETE FROM audit_head;");
  auto report = verify();
  EXPECT_FALSE(report.ok);
  EXPECT_NE(report.message.find("chain head record is missing"), std::string::npos) << report.message;
}

TEST_F(AuditLogTest, SharesTheFileWithTheFlowLogAndSurvivesReopening) {
  append_rows(3);
  auto flows = FlowLog::open(path_);
  ASSERT_TRUE(flows.ok()) << flows.error().describe();
  log_.reset();
  auto again = AuditLog::open(path_);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(again->append("client sha256:abc", "authcert-accepted", "sg2", {{"authcert", "ac-1"}}, 1).ok());
  auto report = again->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok) << report->message;
  EXPECT_EQ(report->rows_checked, 4);
  EXPECT_TRUE(flows->gaps(std::nullopt).ok());
}

}  // namespace
}  // namespace sg
