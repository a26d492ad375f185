#include "dirtyring/harvester.hpp"

namespace dirtyring {

std::uint64_t Harvester::harvest(const Sink& sink, const std::function<void()>& after_reset) {
    return harvest_with([&](std::span<const DirtyPage> pages) { sink(pages); },
                        [&] {
                            if (after_reset) after_reset();
                        });
}

}  // namespace dirtyring
