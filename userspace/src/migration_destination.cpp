#include "dirtyring/migration_destination.hpp"

#include <cerrno>
#include <cstring>
#include <vector>

#include "dirtyring/error.hpp"
#include "dirtyring/migration_stream.hpp"

namespace dirtyring {
namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

MigrationDestination::MigrationDestination(Channel& channel, GuestFactory factory, Limits limits)
    : channel_(channel), factory_(std::move(factory)), limits_(limits) {}

MigrationDestination::~MigrationDestination() = default;

DestinationReport MigrationDestination::run() {
    try {
        return receive();
    } catch (const Error& e) {
        guest_.reset();
        memory_.reset();  // the copy is discarded
        if (e.errnum() != ECANCELED && e.errnum() != ECONNRESET) {
            try {
                StreamWriter(channel_).failed(e.what());
            } catch (const Error&) {
                // The source is gone: nobody to tell.
            }
        }
        throw;
    }
}

DestinationReport MigrationDestination::receive() {
    const auto start = Clock::now();
    DestinationReport report;
    StreamReader reader(channel_);
    StreamWriter writer(channel_);
    const StreamHeader header = reader.header(limits_.max_pages, limits_.max_vcpus);
    const std::uint64_t pages = header.pages;
    memory_ = Mapping::anonymous(pages * kStreamPageSize, "destination guest memory");
    auto* memory = memory_.as<std::byte>();
    MemoryDigest received(pages);
    std::vector<std::vector<std::byte>> vcpu_states(header.vcpus);

    for (;;) {
        const Record& r = reader.next();
        switch (r.type) {
            case RecordType::Page:
                std::memcpy(memory + r.index * kStreamPageSize, r.data, kStreamPageSize);
                received.set(r.index, r.hash);
                ++report.pages_received;
                break;
            case RecordType::ZeroPage:
                std::memset(memory + r.index * kStreamPageSize, 0, kStreamPageSize);
                received.set(r.index, r.hash);
                ++report.pages_received;
                ++report.zero_pages;
                break;
            case RecordType::RoundEnd:
                report.rounds = static_cast<unsigned>(r.value);
                break;
            case RecordType::VcpuState:
                if (r.index >= header.vcpus)
                    throw Error(EPROTO, "malformed migration stream: state of vCPU " +
                                            std::to_string(r.index) + " of " +
                                            std::to_string(header.vcpus));
                vcpu_states[r.index] = r.state;
                break;
            case RecordType::Postcopy:
                throw Error(ENOTSUP, "this destination does not support postcopy yet");
            case RecordType::Cancel:
                throw Error(ECANCELED, "the source cancelled the migration");
            case RecordType::End: {
                if (received.digest() != r.value)
                    throw Error(EIO,
                                "the pages received do not add up to the source's memory "
                                "(first difference at a page the source never sent)");
                // What is in memory, not only what arrived, must equal it.
                const MemoryDigest actual = MemoryDigest::of(memory, pages);
                const std::uint64_t diff = actual.first_difference(received);
                if (diff != pages)
                    throw Error(EIO, "destination memory differs from the source's at page " +
                                         std::to_string(diff));
                for (unsigned i = 0; i < header.vcpus; ++i)
                    if (vcpu_states[i].empty())
                        throw Error(EPROTO, "malformed migration stream: no state for vCPU " +
                                                std::to_string(i));
                guest_ = factory_(header.guest, memory, pages, header.vcpus);
                for (unsigned i = 0; i < header.vcpus; ++i) guest_->restore_vcpu(i, vcpu_states[i]);
                guest_->start();
                writer.done(r.value);
                report.digest = r.value;
                report.bytes_received = channel_.bytes_read();
                report.total_time = Clock::now() - start;
                return report;
            }
            default:
                throw Error(EPROTO,
                            "malformed migration stream: a return-path record from the "
                            "source");
        }
    }
}

}  // namespace dirtyring
