// SPDX-License-Identifier: LGPL-2.1-or-later
// Device against the real module, in the QEMU-booted kernel.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>

#include <cerrno>

#include "dirtyring/base/error.hpp"
#include "dirtyring/rings/device.hpp"
#include "dirtyring/rings/module_vm.hpp"

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

// DIRTYRING_CHECK_EXTENSION answers the limits the library was built with
// (the uAPI header's), the features of API version 2, and 0 for a
// capability it does not know; on the device and on a VM fd alike.
TEST(DeviceGuest, CheckExtensionAnswersTheHeadersLimits) {
    using dirtyring::Capability;
    using dirtyring::ModuleVm;
    const auto device = dirtyring::Device::open();
    EXPECT_EQ(ModuleVm::kMaxVcpus, device.check_extension(Capability::MaxVcpus));
    EXPECT_EQ(ModuleVm::kMaxSlots, device.check_extension(Capability::MaxSlots));
    EXPECT_EQ(ModuleVm::kMaxSlotPages, device.check_extension(Capability::MaxSlotPages));
    EXPECT_EQ(ModuleVm::kPageSize, device.check_extension(Capability::PageSize));
    EXPECT_EQ(ModuleVm::kRingMinEntries, device.check_extension(Capability::RingMinEntries));
    EXPECT_EQ(ModuleVm::kRingMaxEntries, device.check_extension(Capability::RingMaxEntries));
    EXPECT_EQ(ModuleVm::kRingReservedEntries,
              device.check_extension(Capability::RingReservedEntries));
    EXPECT_LT(0U, device.check_extension(Capability::MaxVms));
    EXPECT_LT(0U, device.check_extension(Capability::MaxVmsPerProcess));
    EXPECT_LT(0U, device.check_extension(Capability::MaxPinnedPages));
    EXPECT_EQ(1U, device.check_extension(Capability::ResetStatus));
    EXPECT_EQ(1U, device.check_extension(Capability::VcpuReopen));
    EXPECT_EQ(1U, device.check_extension(Capability::PinnedRelog));
    EXPECT_EQ(0U, device.check_extension(static_cast<Capability>(0)));
    EXPECT_EQ(0U, device.check_extension(static_cast<Capability>(0x7fffffff)));

    ModuleVm vm(device, {.vcpu_ring_entries = 128, .vm_ring_entries = 128});
    EXPECT_EQ(ModuleVm::kMaxSlotPages, vm.check_extension(Capability::MaxSlotPages));
    EXPECT_EQ(1U, vm.check_extension(Capability::ResetStatus));
    EXPECT_EQ(0U, vm.check_extension(static_cast<Capability>(0)));
}

}  // namespace
