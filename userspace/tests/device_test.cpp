// SPDX-License-Identifier: LGPL-2.1-or-later
// Device on the host, where the module is not loaded: every way of opening
// something that is not the dirtyring device must fail with a clear error.
#include "dirtyring/rings/device.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "dirtyring/base/error.hpp"

namespace {

struct BadDevice {
    const char* path;
    int errnum;
};

void PrintTo(const BadDevice& bad, std::ostream* os) {
    *os << '"' << bad.path << '"';
}

class DeviceOpenFails : public testing::TestWithParam<BadDevice> {};

TEST_P(DeviceOpenFails, WithErrnoAndPath) {
    const auto& bad = GetParam();
    try {
        (void)dirtyring::Device::open(bad.path);
        FAIL() << bad.path << " opened as a dirtyring device";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(bad.errnum, e.errnum()) << e.what();
        EXPECT_NE(std::string(e.what()).find(bad.path), std::string::npos) << e.what();
    }
}

INSTANTIATE_TEST_SUITE_P(
    BadPaths, DeviceOpenFails,
    testing::Values(BadDevice{"/nonexistent/dirtyring", ENOENT}, BadDevice{"", ENOENT},
                    BadDevice{"/", EISDIR},
                    // A device that is not ours answers the version ioctl with ENOTTY.
                    BadDevice{"/dev/null", ENOTTY}, BadDevice{"/dev/zero", ENOTTY}),
    [](const auto& param_info) { return "case" + std::to_string(param_info.index); });

TEST(Device, ExpectedApiVersionIsTheHeaders) {
    EXPECT_GE(dirtyring::Device::expected_api_version(), 1);
}

}  // namespace
