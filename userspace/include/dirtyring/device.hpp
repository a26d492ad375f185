// The dirtyring module's device, /dev/dirtyring.
#pragma once

#include <string>

#include "dirtyring/unique_fd.hpp"

namespace dirtyring {

class Device {
public:
    static constexpr const char* kDefaultPath = "/dev/dirtyring";

    // Opens the device and checks that the module speaks the API version this
    // library was built for; throws Error otherwise (ENOENT when the module is
    // not loaded, EPROTO on a version mismatch).
    static Device open(const std::string& path = kDefaultPath);

    // The API version the module answers.
    int api_version() const;

    // The API version this library was built against.
    static int expected_api_version() noexcept;

    int fd() const noexcept { return fd_.get(); }

private:
    Device(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

    UniqueFd fd_;
    std::string path_;
};

}  // namespace dirtyring
