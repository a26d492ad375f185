// SPDX-License-Identifier: LGPL-2.1-or-later
// Live migration with the module backend, in the QEMU-booted kernel with
// dirtyring.ko loaded: threads bound to module vCPUs (and an unbound I/O
// thread) dirty module memory while MigrationSource moves it to a
// destination on ordinary memory, by precopy and by postcopy.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <future>
#include <thread>

#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migration_destination.hpp"
#include "dirtyring/migration/migration_source.hpp"
#include "module_workload.hpp"

namespace {

using dirtyring::Channel;
using dirtyring::MigratableGuest;
using dirtyring::MigrationDestination;
using dirtyring::MigrationOptions;
using dirtyring::MigrationSource;
using dirtyring::UniqueFd;
using dirtyring::migrate::ModuleWorkload;
using dirtyring::migrate::WorkloadConfig;
using namespace std::chrono_literals;

// Precopy converges: the guest dirties less than the stream carries.
// Postcopy: the guest keeps writing while a slow stream still brings pages.
WorkloadConfig config(bool postcopy) {
    WorkloadConfig c;
    c.vcpus = 2;
    c.memory_bytes = 8 << 20;
    c.working_set_pages = 768;  // 256 pages each: 2 vCPUs and the I/O thread
    c.dirty_rate = postcopy ? 6000 : 1500;
    return c;
}

struct Migrated {
    dirtyring::SourceReport source;
    dirtyring::DestinationReport destination;
};

class ModuleMigration : public testing::TestWithParam<bool> {};

TEST_P(ModuleMigration, MovesTheMemoryAndTheThreadsContinue) {
    const bool postcopy = GetParam();
    int fds[2];
    ASSERT_EQ(0, ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds));
    Channel src{UniqueFd(fds[0])};
    Channel dst{UniqueFd(fds[1])};
    auto guest = ModuleWorkload::source(config(postcopy));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(30s));

    ModuleWorkload* arrived = nullptr;
    MigrationDestination destination(
        dst, [&](std::uint32_t kind, std::byte* memory, std::uint64_t pages, unsigned vcpus) {
            EXPECT_EQ(dirtyring::migrate::kGuestThreads, kind);
            auto g = ModuleWorkload::destination(config(postcopy), memory, pages, vcpus);
            arrived = g.get();
            return std::unique_ptr<MigratableGuest>(std::move(g));
        });
    auto received = std::async(std::launch::async, [&] { return destination.run(); });
    MigrationOptions options;
    options.postcopy = postcopy;
    options.bandwidth_limit = postcopy ? (1 << 20) : 0;
    options.downtime_limit = 200ms;
    MigrationSource source(*guest, src, options);
    const auto report = source.run();
    const auto dest_report = received.get();

    EXPECT_EQ(postcopy ? "postcopy" : "precopy", report.mode);
    EXPECT_EQ(report.mode, dest_report.mode);
    EXPECT_EQ(report.digest, dest_report.digest);
    // The unbound I/O thread's pages came through the per-VM ring.
    EXPECT_GT(guest->vm_ring_pages(), 0U);
    if (postcopy) {
        EXPECT_GT(dest_report.postcopy_faults, 0U);
        EXPECT_GT(report.postcopy_requests, 0U);
    }
    ASSERT_NE(nullptr, arrived);
    std::this_thread::sleep_for(100ms);
    arrived->stop();
    ASSERT_EQ(nullptr, arrived->failure());
    for (unsigned i = 0; i < 2; ++i) {
        EXPECT_EQ(guest->next_value(i), arrived->restored_value(i)) << "vCPU " << i;
        EXPECT_GT(arrived->next_value(i), arrived->restored_value(i)) << "vCPU " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Mode, ModuleMigration, testing::Values(false, true),
                         [](const auto& p) { return p.param ? "postcopy" : "precopy"; });

}  // namespace
