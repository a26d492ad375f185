// SPDX-License-Identifier: LGPL-2.1-or-later
// Fault -> page placed -> thread resumed latency: Postcopy with an
// in-process source that places each requested page at once, against the
// floor of a bare loop (poll, read the fault, UFFDIO_COPY) on a
// userfaultfd.  One faulting thread touches fresh pages one at a time and
// times each touch; median and p99 of both, in the same run.
#include <benchmark/benchmark.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/base/mapping.hpp"
#include "dirtyring/base/unique_fd.hpp"
#include "dirtyring/postcopy/postcopy.hpp"
#include "dirtyring/postcopy/userfault.hpp"

namespace {

constexpr std::size_t kPages = 2048;
const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

std::vector<double> touch_all(std::uint8_t* base) {
    std::vector<double> ns;
    ns.reserve(kPages);
    for (std::size_t p = 0; p < kPages; ++p) {
        const auto t0 = std::chrono::steady_clock::now();
        benchmark::DoNotOptimize(*reinterpret_cast<volatile std::uint8_t*>(base + p * kPage));
        const auto t1 = std::chrono::steady_clock::now();
        ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    }
    return ns;
}

// The floor: nothing but the kernel round trip and one copy.
std::vector<double> bare_uffd_copy() {
    dirtyring::Mapping memory = dirtyring::Mapping::anonymous(kPages * kPage, "bench RAM");
    dirtyring::Userfaultfd uffd;
    uffd.register_missing(memory.get(), memory.size());
    dirtyring::UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
    if (!stop) dirtyring::throw_errno("eventfd");
    std::vector<std::uint8_t> page(kPage, 1);
    std::jthread server([&] {
        std::array<dirtyring::UserFault, 64> faults{};
        for (;;) {
            std::array<pollfd, 2> fds{pollfd{stop.get(), POLLIN, 0}, pollfd{uffd.fd(), POLLIN, 0}};
            if (::poll(fds.data(), 2, -1) < 0) continue;
            if (fds[0].revents) return;
            const std::size_t n = uffd.read_faults(faults);
            for (std::size_t i = 0; i < n; ++i)
                uffd.copy(reinterpret_cast<void*>(faults[i].address & ~std::uint64_t{kPage - 1}),
                          page.data(), kPage);
        }
    });
    auto ns = touch_all(memory.as<std::uint8_t>());
    const std::uint64_t one = 1;
    if (::write(stop.get(), &one, sizeof(one)) < 0) dirtyring::throw_errno("write eventfd");
    return ns;
}

class InlineSource : public dirtyring::PageSource {
public:
    void request(const dirtyring::PageRequest& r) override {
        postcopy->place_page(r.host, std::as_bytes(std::span(page)));
    }
    dirtyring::Postcopy* postcopy = nullptr;
    std::vector<std::uint8_t> page = std::vector<std::uint8_t>(kPage, 1);
};

std::vector<double> postcopy() {
    dirtyring::Mapping memory = dirtyring::Mapping::anonymous(kPages * kPage, "bench RAM");
    InlineSource source;
    dirtyring::Postcopy pc(source, {.vcpus = 1});
    source.postcopy = &pc;
    pc.add_range(memory.get(), memory.size());
    pc.register_vcpu_thread(::gettid(), 0);
    pc.start();
    auto ns = touch_all(memory.as<std::uint8_t>());
    pc.stop();
    return ns;
}

double percentile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

void BM_FaultToResume(benchmark::State& state) {
    std::vector<double> floor_ns, postcopy_ns;
    for (auto _ : state) {
        auto f = bare_uffd_copy();
        auto p = postcopy();
        floor_ns.insert(floor_ns.end(), f.begin(), f.end());
        postcopy_ns.insert(postcopy_ns.end(), p.begin(), p.end());
    }
    const double floor_median = percentile(floor_ns, 0.5), floor_p99 = percentile(floor_ns, 0.99);
    const double median = percentile(postcopy_ns, 0.5), p99 = percentile(postcopy_ns, 0.99);
    state.counters["floor_median_ns"] = floor_median;
    state.counters["floor_p99_ns"] = floor_p99;
    state.counters["postcopy_median_ns"] = median;
    state.counters["postcopy_p99_ns"] = p99;
    state.counters["median_over_floor"] = median / floor_median;
    state.counters["p99_over_floor"] = p99 / floor_p99;
}
BENCHMARK(BM_FaultToResume)->Iterations(5)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
