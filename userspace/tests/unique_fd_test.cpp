// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/base/unique_fd.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>

namespace {

bool is_open(int fd) {
    return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

int open_null() {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    EXPECT_LE(0, fd);
    return fd;
}

TEST(UniqueFd, DefaultOwnsNothing) {
    dirtyring::UniqueFd fd;
    EXPECT_EQ(-1, fd.get());
    EXPECT_FALSE(fd);
}

TEST(UniqueFd, ClosesOnDestruction) {
    const int raw = open_null();
    {
        dirtyring::UniqueFd fd(raw);
        EXPECT_TRUE(fd);
    }
    EXPECT_FALSE(is_open(raw));
}

TEST(UniqueFd, MoveTransfersOwnership) {
    const int raw = open_null();
    dirtyring::UniqueFd a(raw);
    dirtyring::UniqueFd b(std::move(a));
    EXPECT_EQ(-1, a.get());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_EQ(raw, b.get());
    dirtyring::UniqueFd c;
    c = std::move(b);
    EXPECT_EQ(raw, c.get());
    EXPECT_TRUE(is_open(raw));
}

TEST(UniqueFd, MoveAssignClosesPrevious) {
    const int first = open_null();
    const int second = open_null();
    dirtyring::UniqueFd a(first);
    a = dirtyring::UniqueFd(second);
    EXPECT_FALSE(is_open(first));
    EXPECT_TRUE(is_open(second));
}

TEST(UniqueFd, ReleaseKeepsDescriptorOpen) {
    const int raw = open_null();
    int released;
    {
        dirtyring::UniqueFd fd(raw);
        released = fd.release();
    }
    EXPECT_EQ(raw, released);
    EXPECT_TRUE(is_open(raw));
    ::close(raw);
}

TEST(UniqueFd, ResetToSameDescriptorKeepsItOpen) {
    const int raw = open_null();
    dirtyring::UniqueFd fd(raw);
    fd.reset(raw);
    EXPECT_TRUE(is_open(raw));
}

}  // namespace
