// SPDX-License-Identifier: LGPL-2.1-or-later
// What the in-process migration tests share: socketpair channels, an
// errno catcher, and a destination whose KVM guest keeps a copy of the
// memory it started on.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migration_destination.hpp"
#include "dirtyring/migration/migration_stream.hpp"
#include "kvm_workload.hpp"
#include "testing/kvm_guest.hpp"

namespace dirtyring::testing_support {

using dirtyring::migrate::KvmWorkload;
using dirtyring::migrate::WorkloadConfig;
using namespace std::chrono_literals;

#define SKIP_WITHOUT_KVM()                                                              \
    do {                                                                                \
        if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why; \
    } while (0)

struct Pair {
    Channel a;
    Channel b;
};

inline Pair channel_pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds))
        dirtyring::throw_errno("socketpair");
    return Pair{Channel(UniqueFd(fds[0])), Channel(UniqueFd(fds[1]))};
}

inline int errno_of(const std::function<void()>& f, std::string* message = nullptr) {
    try {
        f();
    } catch (const Error& e) {
        if (message) *message = e.what();
        return e.errnum();
    }
    return 0;
}

// A destination guest that keeps a copy of the memory it was started on.
class SnapshotGuest : public MigratableGuest {
public:
    // snapshot: copy the memory at start(); not in postcopy, where reading a
    // missing page from the receiving thread would wait for that very thread.
    SnapshotGuest(std::unique_ptr<KvmWorkload> inner, bool take_snapshot)
        : inner_(std::move(inner)), snapshot_(take_snapshot) {}
    std::uint32_t kind() const noexcept override { return inner_->kind(); }
    std::byte* memory() noexcept override { return inner_->memory(); }
    std::uint64_t pages() const noexcept override { return inner_->pages(); }
    unsigned vcpus() const noexcept override { return inner_->vcpus(); }
    void start() override {
        if (snapshot_) snapshot.assign(memory(), memory() + pages() * kStreamPageSize);
        inner_->start();
    }
    void stop() override { inner_->stop(); }
    std::exception_ptr failure() const override { return inner_->failure(); }
    std::uint64_t harvest_into(std::vector<std::uint64_t>& m) override {
        return inner_->harvest_into(m);
    }
    std::vector<std::byte> save_vcpu(unsigned v) override { return inner_->save_vcpu(v); }
    void restore_vcpu(unsigned v, std::span<const std::byte> s) override {
        inner_->restore_vcpu(v, s);
    }
    std::uint64_t progress(unsigned v) override { return inner_->progress(v); }
    void set_vcpu_thread_hook(VcpuThreadHook hook) override {
        inner_->set_vcpu_thread_hook(std::move(hook));
    }
    KvmWorkload& kvm() { return *inner_; }

    std::vector<std::byte> snapshot;

private:
    std::unique_ptr<KvmWorkload> inner_;
    bool snapshot_;
};

inline WorkloadConfig small_guest(unsigned vcpus) {
    WorkloadConfig c;
    c.vcpus = vcpus;
    c.memory_bytes = 16 << 20;
    c.working_set_pages = 1024;
    c.dirty_rate = 20000;
    return c;
}

inline bool keeps_running(MigratableGuest& guest) {
    const auto before = guest.progress(0);
    for (int i = 0; i < 100 && guest.progress(0) == before; ++i) std::this_thread::sleep_for(10ms);
    return guest.failure() == nullptr && guest.progress(0) > before;
}

struct Destination {
    bool snapshot = true;
    SnapshotGuest* guest = nullptr;
    std::function<void()> on_start;  // when the guest is built, before it runs
    MigrationDestination::GuestFactory factory() {
        return [this](std::uint32_t, std::byte* memory, std::uint64_t pages, unsigned vcpus) {
            if (on_start) on_start();
            auto g = std::make_unique<SnapshotGuest>(
                KvmWorkload::destination(small_guest(vcpus), memory, pages, vcpus), snapshot);
            guest = g.get();
            return std::unique_ptr<MigratableGuest>(std::move(g));
        };
    }
};

// A destination receiving from `wire` on its own thread.
struct Receiving {
    explicit Receiving(Channel& wire, bool snapshot = true, Channel* preempt = nullptr,
                       std::function<void()> on_start = {},
                       std::vector<Channel*> page_channels = {})
        : d{snapshot, nullptr, std::move(on_start)}, destination(wire, d.factory()) {
        if (preempt) destination.use_preempt_channel(*preempt);
        destination.use_page_channels(std::move(page_channels));
        received = std::async(std::launch::async, [this] { return destination.run(); });
    }

    Destination d;
    MigrationDestination destination;
    std::future<dirtyring::DestinationReport> received;
};

}  // namespace dirtyring::testing_support
