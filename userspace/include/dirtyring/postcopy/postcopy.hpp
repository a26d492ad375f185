// SPDX-License-Identifier: LGPL-2.1-or-later
// The destination side of postcopy: guest RAM registered with a
// userfaultfd, a fault thread that turns faults into page requests to a
// PageSource, page placement, and vCPU blocktime accounting.
//
// Owns the userfaultfd, the eventfd that stops or pauses the fault thread,
// the fault thread, per page its state (missing, requested, received) and
// the Blocktime.  How a migration tool drives it:
//   - setup thread: add_range() for each RAM block, place_page() for pages
//     already known, mark_received() and mark_zero() for pages a precopy
//     delivered, then start();
//   - vCPU threads (or the VMM for them): register_vcpu_thread(gettid(), i)
//     before running the vCPU;
//   - the fault thread (ours) calls PageSource::request() once per page
//     (the return path);
//   - any number of receiving threads call place_page() / place_zero_page()
//     for every page that arrives, requested or background, and fail() when
//     their stream breaks;
//   - the control thread: pause()/resume() (e.g. while a broken stream is
//     re-established), wait_complete(), blocktime(), stop().
// Everything is thread-safe except add_range(), which must come before
// start() and before other threads use the object.
//
// Faulting threads wait for their page; they are never left waiting past
// stop() (or the destructor): stop() unregisters the ranges, which wakes
// them, and a page still missing then reads as zeros.  After an error
// (fail(), a kernel error, a throwing PageSource) the fault thread ends and
// faulting threads wait until stop(), so no guest runs on made-up memory
// before the VMM has seen the error.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/base/unique_fd.hpp"
#include "dirtyring/postcopy/blocktime.hpp"
#include "dirtyring/postcopy/page_source.hpp"
#include "dirtyring/postcopy/userfault.hpp"

namespace dirtyring {

class Postcopy {
public:
    struct Options {
        unsigned vcpus = 1;
        std::size_t page_size = 4096;
        Blocktime::Clock clock = Blocktime::monotonic_clock();
    };

    enum class State { Setup, Running, Paused, Failed, Stopped };

    struct Counters {
        std::uint64_t faults = 0;            // read from the userfaultfd and accounted
        std::uint64_t requests = 0;          // sent to the source
        std::uint64_t duplicate_faults = 0;  // on pages already requested: not sent again
        std::uint64_t late_faults = 0;       // on pages placed meanwhile: woken only
        std::uint64_t zero_faults = 0;       // on mark_zero() pages: answered here
        std::uint64_t placed = 0;            // pages placed by us
        std::uint64_t existed = 0;           // placement found the page there (EEXIST)
        std::uint64_t background = 0;        // pages received without a request
    };

    Postcopy(PageSource& source, const Options& options);
    ~Postcopy();
    Postcopy(const Postcopy&) = delete;
    Postcopy& operator=(const Postcopy&) = delete;

    // Registers [host, host + length) (page-aligned anonymous memory whose
    // pages are all missing; pages already present never fault).  Returns
    // the range index used in PageRequest.
    unsigned add_range(void* host, std::size_t length);

    // Before start(), for pages of a registered range a precopy delivered
    // already.  mark_received(): the pages are in memory; they never fault
    // and are never asked for again.  mark_zero(): the pages read as zeros
    // but may have no mapping (a zero page the precopy never had to
    // write); a fault on one is answered at once with a zero page, never
    // sent to the source.  Neither touches the memory.
    void mark_received(void* host, std::size_t length);
    void mark_zero(void* host, std::size_t length);

    // Blocktime's: a vCPU thread registers as it starts and unregisters
    // as it exits, so that a tid the kernel reuses is charged right.
    void register_vcpu_thread(pid_t tid, unsigned vcpu);
    void unregister_vcpu_thread(pid_t tid);

    void start();

    // Places one page (data: page_size bytes); requested or not.  Returns
    // Existed when it was there already (the other stream won): harmless.
    // Throws the error state's Error after a failure, ESHUTDOWN after stop().
    Userfaultfd::Placed place_page(void* host, std::span<const std::byte> data);
    Userfaultfd::Placed place_zero_page(void* host);

    // The fault thread stops reading faults (they wait in the kernel) until
    // resume(); pages can still be placed.  pause() returns once the fault
    // thread has parked.
    void pause();
    void resume();

    // Ends the fault thread and releases every faulting thread; idempotent.
    void stop();

    // Puts the postcopy in its error state (a receiving thread's stream broke).
    void fail(const Error& error);

    State state() const;
    std::optional<Error> error() const;
    // Waits until every page of every range is received; false on timeout.
    // Throws the error state's Error.
    bool wait_complete(std::chrono::milliseconds timeout);

    // What `range` still waits for: runs [first, first + count) of page
    // indices not received, and which of those pages threads faulted on
    // (requested).  For a broken stream resumed on a new one (pause()
    // first, so that no request is half sent): ask the source for all of
    // it again, the requested pages first.
    struct Outstanding {
        std::vector<std::pair<std::size_t, std::size_t>> missing;
        std::vector<std::size_t> requested;
    };
    Outstanding outstanding(unsigned range) const;

    BlocktimeReport blocktime() const;
    Counters counters() const;
    std::size_t page_size() const noexcept { return page_size_; }

private:
    enum class PageState : std::uint8_t { Missing, Requested, Received, Zero };
    enum class Command { Run, Pause, Stop };
    struct Range {
        std::uint8_t* host;
        std::size_t length;
        std::vector<PageState> pages;
    };

    // The range and page index of a page address; throws EINVAL if none.
    std::pair<unsigned, std::size_t> locate(const void* host, const char* what) const;
    template <typename PlaceFn>
    Userfaultfd::Placed place(void* host, const char* what, PlaceFn&& fn);
    void fault_loop();
    void mark(void* host, std::size_t length, PageState state, const char* what);
    void handle_faults(std::span<const UserFault> faults, std::vector<PageRequest>& requests,
                       std::vector<void*>& wakes, std::vector<void*>& zeros);
    void set_error_locked(const Error& error);
    void kick();
    void throw_if_unusable_locked() const;

    PageSource& source_;
    const std::size_t page_size_;
    Userfaultfd uffd_;
    UniqueFd event_;
    std::vector<Range> ranges_;

    mutable std::mutex mutex_;
    std::condition_variable cv_;
    State state_ = State::Setup;
    Command command_ = Command::Run;
    bool parked_ = false;
    bool thread_done_ = false;
    std::optional<Error> error_;
    std::uint64_t total_pages_ = 0;
    std::uint64_t received_pages_ = 0;
    Counters counters_;
    Blocktime blocktime_;

    std::jthread thread_;  // last: joined before the members it uses go
};

}  // namespace dirtyring
