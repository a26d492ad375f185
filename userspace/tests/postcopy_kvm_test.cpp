// SPDX-License-Identifier: LGPL-2.1-or-later
// Postcopy under a real KVM guest on the host's /dev/kvm: the guest's data
// pages are registered with userfaultfd, each vCPU runs in its own thread,
// and its writes fault through KVM into our fault thread.  Skipped, with
// the reason, where KVM is unusable.
//
// Pages 0 (program) and 1 (mailboxes) are written by KvmGuest from this
// thread before registration, so only the data pages are registered: the
// program and mailboxes never fault, every data page does.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/base/mapping.hpp"
#include "dirtyring/postcopy/postcopy.hpp"
#include "postcopy_test_source.hpp"
#include "testing/kvm_guest.hpp"

namespace {

using namespace std::chrono_literals;
using dirtyring::GuestProgram;
using dirtyring::KvmGuest;
using dirtyring::Mapping;
using dirtyring::Postcopy;
using dirtyring_test::DelayedSource;
using dirtyring_test::pattern;

TEST(PostcopyKvm, VcpuFaultsAreAttributedAndTheGuestCompletes) {
    if (auto why = KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    // vCPU i writes 8 * (i + 1) pages of its own: a different count per
    // vCPU, so a fault attributed to the wrong vCPU shows in the counts.
    constexpr unsigned kVcpus = 3;
    const auto pages_of = [](unsigned i) { return 8 * (i + 1); };
    const auto first_of = [](unsigned i) { return 8 * i * (i + 1) / 2; };  // data page index
    constexpr unsigned kPages = 8 + 16 + 24;
    constexpr std::uint64_t kPage = KvmGuest::kPageSize;
    constexpr std::uint64_t kData = kPages * kPage;
    constexpr std::uint64_t kBytes = KvmGuest::kFirstDataPage * kPage + kData;
    constexpr auto kDelay = 2ms;
    Mapping memory = Mapping::anonymous(kBytes, "guest RAM");
    KvmGuest guest({.vcpus = kVcpus, .memory_bytes = kBytes, .memory = memory.get()});
    for (unsigned i = 0; i < kVcpus; ++i)
        guest.set_program(i, GuestProgram{pages_of(i), KvmGuest::kFirstDataPage + first_of(i), 1,
                                          KvmGuest::kMaxExitEvery});

    DelayedSource source(kDelay);
    Postcopy pc(source, {.vcpus = kVcpus});
    auto* data = guest.memory() + KvmGuest::kFirstDataPage * kPage;
    const unsigned range = pc.add_range(data, kData);
    pc.start();
    source.attach(pc);

    std::atomic<unsigned> done{0};
    std::vector<std::string> errors(kVcpus);
    {
        std::vector<std::jthread> vcpus;
        std::latch ready(kVcpus);
        for (unsigned i = 0; i < kVcpus; ++i) {
            vcpus.emplace_back([&, i] {
                try {
                    pc.register_vcpu_thread(::gettid(), i);
                    ready.arrive_and_wait();
                    while (guest.run(i) != KvmGuest::Exit::Pass) {
                    }
                } catch (const std::exception& e) {
                    errors[i] = e.what();
                }
                ++done;
            });
        }
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        while (done < kVcpus && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(1ms);
        if (done < kVcpus) {
            ADD_FAILURE() << "a vCPU is still blocked after 30 s; counters: requests "
                          << pc.counters().requests << ", placed " << pc.counters().placed;
            std::_Exit(1);  // joining would hang
        }
    }
    for (unsigned i = 0; i < kVcpus; ++i) EXPECT_EQ("", errors[i]) << "vCPU " << i;
    EXPECT_TRUE(pc.wait_complete(5s));

    // The guest wrote its counter (1, 2, ... per vCPU) over the first 32
    // bits of each of its pages; the rest is the source's content.
    for (unsigned i = 0; i < kVcpus; ++i) {
        for (unsigned n = 0; n < pages_of(i); ++n) {
            const std::uint64_t offset = std::uint64_t{first_of(i) + n} * kPage;
            std::uint32_t counter = 0, high = 0;
            std::memcpy(&counter, data + offset, 4);
            std::memcpy(&high, data + offset + 4, 4);
            EXPECT_EQ(n + 1, counter) << "vCPU " << i << " page " << n;
            EXPECT_EQ(static_cast<std::uint32_t>(pattern(range, offset, 0) >> 32), high);
            std::uint64_t word = 0;
            std::memcpy(&word, data + offset + kPage - 8, 8);
            EXPECT_EQ(pattern(range, offset, kPage / 8 - 1), word);
        }
    }

    const auto counters = pc.counters();
    const auto report = pc.blocktime();
    EXPECT_EQ(kPages, counters.requests);
    for (const auto& [page, n] : source.requests()) EXPECT_EQ(1, n) << page;
    // Every fault came from a vCPU thread, attributed to the vCPU whose
    // pages it touched (each vCPU writes only its own pages).
    EXPECT_EQ(0U, report.non_vcpu_faults);
    for (unsigned i = 0; i < kVcpus; ++i) {
        EXPECT_EQ(pages_of(i), report.vcpu_faults[i]) << "vCPU " << i;
        EXPECT_EQ(0U, report.vcpu_faults_in_flight[i]);
        EXPECT_LE(pages_of(i) * 2000000ULL, report.vcpu_blocktime_ns[i]) << "vCPU " << i;
    }
    RecordProperty("blocktime", report.to_json());
    std::cout << "KVM postcopy: faults " << counters.faults << ", duplicates "
              << counters.duplicate_faults << ", late " << counters.late_faults << "\n"
              << report.to_json() << "\n";
    source.shutdown();
}

}  // namespace
