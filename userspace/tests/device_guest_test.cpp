// Device against the real module, in the QEMU-booted kernel.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>

#include <cerrno>

#include "dirtyring/device.hpp"
#include "dirtyring/error.hpp"

namespace {

TEST(DeviceGuest, OpensAndAnswersVersion) {
    const auto device = dirtyring::Device::open();
    EXPECT_EQ(dirtyring::Device::expected_api_version(), device.api_version());
    EXPECT_NE(-1, ::fcntl(device.fd(), F_GETFD));
}

TEST(DeviceGuest, DescriptorIsCloseOnExec) {
    const auto device = dirtyring::Device::open();
    EXPECT_EQ(FD_CLOEXEC, ::fcntl(device.fd(), F_GETFD) & FD_CLOEXEC);
}

TEST(DeviceGuest, ManyDevicesAtOnce) {
    std::vector<dirtyring::Device> devices;
    for (int i = 0; i < 64; ++i) devices.push_back(dirtyring::Device::open());
    for (const auto& d : devices)
        EXPECT_EQ(dirtyring::Device::expected_api_version(), d.api_version());
}

}  // namespace
