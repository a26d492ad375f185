// SPDX-License-Identifier: LGPL-2.1-or-later
// The smallest program that uses libdirtyring: asks the module for its API
// version, or says why it cannot.
#include <dirtyring/base/error.hpp>
#include <dirtyring/rings/device.hpp>
#include <iostream>

int main() {
    try {
        const auto device = dirtyring::Device::open();
        std::cout << "consumer: dirtyring API version " << device.api_version() << "\n";
    } catch (const dirtyring::Error& e) {
        std::cout << "consumer: library linked, module unavailable: " << e.what() << "\n";
    }
    return 0;
}
