// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/base/error.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

namespace {

TEST(Error, MessageSaysWhatAndWhy) {
    const dirtyring::Error e(ENOENT, "open /dev/dirtyring");
    EXPECT_EQ(ENOENT, e.errnum());
    EXPECT_EQ(std::errc::no_such_file_or_directory, e.code());
    EXPECT_EQ(std::string("open /dev/dirtyring: No such file or directory"), e.what());
}

TEST(Error, ThrowErrnoTakesCurrentErrno) {
    errno = EACCES;
    try {
        dirtyring::throw_errno("mmap");
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EACCES, e.errnum());
        EXPECT_NE(std::string(e.what()).find("mmap: "), std::string::npos);
        return;
    }
    FAIL() << "throw_errno returned";
}

TEST(Error, IsASystemError) {
    EXPECT_THROW(throw dirtyring::Error(EINVAL, "x"), std::system_error);
}

}  // namespace
