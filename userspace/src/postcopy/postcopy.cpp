// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/postcopy/postcopy.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <exception>
#include <string>

namespace dirtyring {

Postcopy::Postcopy(PageSource& source, const Options& options)
    : source_(source), page_size_(options.page_size), blocktime_(options.vcpus, options.clock) {
    if (page_size_ == 0 || (page_size_ & (page_size_ - 1)) ||
        page_size_ != static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)))
        throw Error(EINVAL, "Postcopy: page size " + std::to_string(page_size_) +
                                " (the host's base page size only)");
    event_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!event_) throw_errno("eventfd for the postcopy fault thread");
}

Postcopy::~Postcopy() {
    try {
        stop();
    } catch (const Error&) {
        // Unregistering failed: nothing left to do about it here; the
        // userfaultfd's close (after the fault thread is joined) still
        // releases every waiting thread.
    }
}

unsigned Postcopy::add_range(void* host, std::size_t length) {
    const auto addr = reinterpret_cast<std::uintptr_t>(host);
    if (!host || length == 0 || addr % page_size_ || length % page_size_)
        throw Error(EINVAL, "Postcopy::add_range: " + std::to_string(addr) + "+" +
                                std::to_string(length) + " is not a page-aligned range");
    for (const Range& r : ranges_) {
        const auto start = reinterpret_cast<std::uintptr_t>(r.host);
        if (addr < start + r.length && start < addr + length)
            throw Error(EEXIST, "Postcopy::add_range: " + std::to_string(addr) + "+" +
                                    std::to_string(length) + " overlaps a registered range");
    }
    {
        std::lock_guard lock(mutex_);
        if (state_ != State::Setup) throw Error(EBUSY, "Postcopy::add_range after start()");
    }
    uffd_.register_missing(host, length);
    ranges_.push_back(Range{static_cast<std::uint8_t*>(host), length,
                            std::vector<PageState>(length / page_size_, PageState::Missing)});
    std::lock_guard lock(mutex_);
    total_pages_ += length / page_size_;
    return static_cast<unsigned>(ranges_.size() - 1);
}

void Postcopy::mark(void* host, std::size_t length, PageState state, const char* what) {
    if (length == 0 || length % page_size_)
        throw Error(EINVAL, std::string(what) + ": " + std::to_string(length) +
                                " bytes, not a whole number of pages");
    const auto [range, first] = locate(host, what);
    std::vector<PageState>& pages = ranges_[range].pages;
    const std::size_t count = length / page_size_;
    if (count > pages.size() - first)
        throw Error(EINVAL, std::string(what) + ": the pages run past their range");
    std::lock_guard lock(mutex_);
    if (state_ != State::Setup) throw Error(EBUSY, std::string(what) + " after start()");
    for (std::size_t i = first; i < first + count; ++i) {
        if (pages[i] != PageState::Received && pages[i] != PageState::Zero) ++received_pages_;
        pages[i] = state;
    }
}

void Postcopy::mark_received(void* host, std::size_t length) {
    mark(host, length, PageState::Received, "Postcopy::mark_received");
}

void Postcopy::mark_zero(void* host, std::size_t length) {
    mark(host, length, PageState::Zero, "Postcopy::mark_zero");
}

void Postcopy::register_vcpu_thread(pid_t tid, unsigned vcpu) {
    std::lock_guard lock(mutex_);
    blocktime_.register_vcpu_thread(tid, vcpu);
}

void Postcopy::unregister_vcpu_thread(pid_t tid) {
    std::lock_guard lock(mutex_);
    blocktime_.unregister_vcpu_thread(tid);
}

void Postcopy::start() {
    std::lock_guard lock(mutex_);
    if (state_ != State::Setup) throw Error(EBUSY, "Postcopy::start: already started");
    if (ranges_.empty()) throw Error(EINVAL, "Postcopy::start: no range registered");
    state_ = State::Running;
    thread_ = std::jthread([this] { fault_loop(); });
}

std::pair<unsigned, std::size_t> Postcopy::locate(const void* host, const char* what) const {
    const auto addr = reinterpret_cast<std::uintptr_t>(host);
    if (addr % page_size_ == 0) {
        for (unsigned i = 0; i < ranges_.size(); ++i) {
            const auto start = reinterpret_cast<std::uintptr_t>(ranges_[i].host);
            if (addr >= start && addr - start < ranges_[i].length)
                return {i, (addr - start) / page_size_};
        }
    }
    throw Error(EINVAL, std::string(what) + ": " + std::to_string(addr) +
                            " is not a page of a registered range");
}

void Postcopy::throw_if_unusable_locked() const {
    if (error_) throw *error_;
    if (state_ == State::Stopped) throw Error(ESHUTDOWN, "postcopy stopped");
}

template <typename PlaceFn>
Userfaultfd::Placed Postcopy::place(void* host, const char* what, PlaceFn&& fn) {
    const auto [range, index] = locate(host, what);
    {
        std::lock_guard lock(mutex_);
        throw_if_unusable_locked();
        // A Zero page is as good as received: its zeros are placed only on
        // a fault, and nothing the source sends can be newer.
        const PageState state = ranges_[range].pages[index];
        if (state == PageState::Received || state == PageState::Zero) {
            ++counters_.existed;
            return Userfaultfd::Placed::Existed;
        }
    }
    // Outside the lock: the copy is the slow part, and placements of
    // different pages proceed in parallel.  It wakes the faulting threads.
    const Userfaultfd::Placed placed = fn();
    std::lock_guard lock(mutex_);
    PageState& page = ranges_[range].pages[index];
    if (placed == Userfaultfd::Placed::Existed)
        ++counters_.existed;
    else
        ++counters_.placed;
    if (page != PageState::Received) {
        if (page == PageState::Missing) ++counters_.background;
        page = PageState::Received;
        if (++received_pages_ == total_pages_) cv_.notify_all();
    }
    // Under the same lock as the fault thread's page-state check: a fault
    // is either accounted before this or seen as late and not accounted.
    blocktime_.fault_end(reinterpret_cast<std::uintptr_t>(host));
    return placed;
}

Userfaultfd::Placed Postcopy::place_page(void* host, std::span<const std::byte> data) {
    if (data.size() != page_size_)
        throw Error(EINVAL, "Postcopy::place_page: " + std::to_string(data.size()) +
                                " bytes, not one page of " + std::to_string(page_size_));
    return place(host, "Postcopy::place_page",
                 [&] { return uffd_.copy(host, data.data(), page_size_); });
}

Userfaultfd::Placed Postcopy::place_zero_page(void* host) {
    return place(host, "Postcopy::place_zero_page",
                 [&] { return uffd_.zeropage(host, page_size_); });
}

void Postcopy::kick() {
    // An eventfd counter: a kick before the fault thread polls is not lost.
    const std::uint64_t one = 1;
    if (::write(event_.get(), &one, sizeof(one)) < 0 && errno != EAGAIN)
        throw_errno("write postcopy eventfd");
}

void Postcopy::pause() {
    std::unique_lock lock(mutex_);
    throw_if_unusable_locked();
    if (state_ != State::Running && state_ != State::Paused)
        throw Error(EINVAL, "Postcopy::pause: not started");
    command_ = Command::Pause;
    kick();
    cv_.wait(lock, [&] { return parked_ || thread_done_; });
    if (error_) throw *error_;
    state_ = State::Paused;
}

void Postcopy::resume() {
    std::lock_guard lock(mutex_);
    throw_if_unusable_locked();
    if (state_ != State::Paused) throw Error(EINVAL, "Postcopy::resume: not paused");
    command_ = Command::Run;
    state_ = State::Running;
    kick();
}

void Postcopy::stop() {
    {
        std::lock_guard lock(mutex_);
        if (state_ == State::Stopped) return;
        command_ = Command::Stop;
        if (state_ != State::Failed) state_ = State::Stopped;
        kick();
    }
    if (thread_.joinable()) thread_.join();
    {
        std::lock_guard lock(mutex_);
        state_ = State::Stopped;
        cv_.notify_all();
    }
    // Wakes every thread still waiting on a page; the pages they wait for
    // read as zeros from now on.
    for (const Range& r : ranges_) uffd_.unregister(r.host, r.length);
}

void Postcopy::set_error_locked(const Error& error) {
    if (!error_) error_ = error;
    if (state_ != State::Stopped) state_ = State::Failed;
    command_ = Command::Stop;
    cv_.notify_all();
}

void Postcopy::fail(const Error& error) {
    std::lock_guard lock(mutex_);
    set_error_locked(error);
    kick();
}

Postcopy::State Postcopy::state() const {
    std::lock_guard lock(mutex_);
    return state_;
}

std::optional<Error> Postcopy::error() const {
    std::lock_guard lock(mutex_);
    return error_;
}

bool Postcopy::wait_complete(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] {
        return received_pages_ == total_pages_ || error_ || state_ == State::Stopped;
    });
    if (error_) throw *error_;
    return received_pages_ == total_pages_;
}

Postcopy::Outstanding Postcopy::outstanding(unsigned range) const {
    std::lock_guard lock(mutex_);
    if (range >= ranges_.size())
        throw Error(EINVAL, "Postcopy::outstanding: no range " + std::to_string(range));
    Outstanding o;
    const std::vector<PageState>& pages = ranges_[range].pages;
    for (std::size_t i = 0; i < pages.size(); ++i) {
        if (pages[i] == PageState::Received || pages[i] == PageState::Zero) continue;
        if (pages[i] == PageState::Requested) o.requested.push_back(i);
        if (!o.missing.empty() && o.missing.back().first + o.missing.back().second == i)
            ++o.missing.back().second;
        else
            o.missing.emplace_back(i, 1);
    }
    return o;
}

BlocktimeReport Postcopy::blocktime() const {
    std::lock_guard lock(mutex_);
    return blocktime_.report();
}

Postcopy::Counters Postcopy::counters() const {
    std::lock_guard lock(mutex_);
    return counters_;
}

void Postcopy::handle_faults(std::span<const UserFault> faults, std::vector<PageRequest>& requests,
                             std::vector<void*>& wakes, std::vector<void*>& zeros) {
    std::lock_guard lock(mutex_);
    for (const UserFault& f : faults) {
        const std::uint64_t page = f.address & ~std::uint64_t{page_size_ - 1};
        void* host = reinterpret_cast<void*>(page);
        const auto [range, index] = locate(host, "userfaultfd fault");
        PageState& state = ranges_[range].pages[index];
        if (state == PageState::Received) {
            // Placed after the kernel queued the fault: the placement woke
            // the thread already, but waking again costs little.
            ++counters_.late_faults;
            wakes.push_back(host);
            continue;
        }
        if (state == PageState::Zero) {
            // Known, and never blocked on the source: not a postcopy fault
            // for blocktime.  Received from here on: a second fault on it
            // queued meanwhile is a late one.
            ++counters_.zero_faults;
            state = PageState::Received;
            zeros.push_back(host);
            continue;
        }
        blocktime_.fault_begin(page, f.tid);
        ++counters_.faults;
        if (state == PageState::Requested) {
            ++counters_.duplicate_faults;
            continue;
        }
        state = PageState::Requested;
        requests.push_back(PageRequest{host, range, index * page_size_});
    }
}

void Postcopy::fault_loop() {
    std::array<UserFault, 64> faults{};
    // Reserved once: no allocation per fault.
    std::vector<PageRequest> requests;
    std::vector<void*> wakes;
    std::vector<void*> zeros;
    requests.reserve(faults.size());
    wakes.reserve(faults.size());
    zeros.reserve(faults.size());
    try {
        for (;;) {
            bool paused = false;
            {
                std::lock_guard lock(mutex_);
                if (command_ == Command::Stop) break;
                paused = command_ == Command::Pause;
                if (paused != parked_) {
                    parked_ = paused;
                    cv_.notify_all();
                }
            }
            std::array<pollfd, 2> fds{pollfd{event_.get(), POLLIN, 0},
                                      pollfd{uffd_.fd(), POLLIN, 0}};
            if (::poll(fds.data(), paused ? 1 : 2, -1) < 0) {
                if (errno == EINTR) continue;
                throw_errno("poll userfaultfd and eventfd");
            }
            if (fds[0].revents & POLLIN) {
                std::uint64_t count = 0;
                if (::read(event_.get(), &count, sizeof(count)) < 0 && errno != EAGAIN)
                    throw_errno("read postcopy eventfd");
                continue;  // the command is re-read at the top
            }
            if (paused || !(fds[1].revents & (POLLIN | POLLERR | POLLHUP))) continue;
            const std::size_t n = uffd_.read_faults(faults);
            requests.clear();
            wakes.clear();
            zeros.clear();
            handle_faults(std::span(faults.data(), n), requests, wakes, zeros);
            for (void* host : wakes) uffd_.wake(host, page_size_);
            // Placing it wakes the thread (EEXIST: it was mapped after all).
            for (void* host : zeros)
                if (uffd_.zeropage(host, page_size_) == Userfaultfd::Placed::Existed)
                    uffd_.wake(host, page_size_);
            for (const PageRequest& r : requests) {
                source_.request(r);
                std::lock_guard lock(mutex_);
                ++counters_.requests;
            }
        }
    } catch (const Error& e) {
        std::lock_guard lock(mutex_);
        set_error_locked(e);
    } catch (const std::exception& e) {
        std::lock_guard lock(mutex_);
        set_error_locked(Error(EIO, std::string("postcopy fault thread: ") + e.what()));
    }
    std::lock_guard lock(mutex_);
    thread_done_ = true;
    parked_ = false;
    cv_.notify_all();
}

}  // namespace dirtyring
