// SPDX-License-Identifier: GPL-2.0
/*
 * Tests of /dev/dirtyring itself: the device node, the API version, and the
 * answer to ioctls it does not know.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/dirtyring.h>

#include "../kselftest_harness.h"

#define DEVICE_PATH "/dev/dirtyring"

FIXTURE(device) {
	int fd;
};

FIXTURE_SETUP(device)
{
	/*
	 * No skip when the device is missing: these tests run where the
	 * module was loaded, so a missing node is a failure.  (The 6.1
	 * harness would also run the test body after a skip in setup.)
	 */
	self->fd = open(DEVICE_PATH, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, self->fd) TH_LOG("open " DEVICE_PATH ": %s",
				      strerror(errno));
}

FIXTURE_TEARDOWN(device)
{
	if (self->fd >= 0)
		EXPECT_EQ(0, close(self->fd));
}

TEST_F(device, is_char_device)
{
	struct stat st;

	ASSERT_EQ(0, fstat(self->fd, &st));
	EXPECT_TRUE(S_ISCHR(st.st_mode));
	/* Only root may create VMs: the module pins memory. */
	EXPECT_EQ(0600, st.st_mode & 0777);
}

TEST_F(device, api_version)
{
	int version = ioctl(self->fd, DIRTYRING_GET_API_VERSION, 0);

	TH_LOG("dirtyring API version %d", version);
	EXPECT_EQ(DIRTYRING_API_VERSION, version);
}

TEST_F(device, api_version_rejects_argument)
{
	EXPECT_EQ(-1, ioctl(self->fd, DIRTYRING_GET_API_VERSION, 1UL));
	EXPECT_EQ(EINVAL, errno);
}

TEST_F(device, unknown_ioctls_get_enotty)
{
	static const struct {
		const char *what;
		unsigned long cmd;
	} cases[] = {
		{ "next free number", _IO(DIRTYRING_IOCTL_TYPE, 0xff) },
		{ "version number with a direction",
		  _IOR(DIRTYRING_IOCTL_TYPE, 0x00, int) },
		{ "version number with a size",
		  _IOW(DIRTYRING_IOCTL_TYPE, 0x00, long) },
		{ "another driver's type", _IO(0xAE, 0x00) },
		{ "zero", 0 },
		{ "all ones", ~0UL },
	};
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		errno = 0;
		EXPECT_EQ(-1, ioctl(self->fd, cases[i].cmd, 0))
			TH_LOG("%s: 0x%lx", cases[i].what, cases[i].cmd);
		EXPECT_EQ(ENOTTY, errno)
			TH_LOG("%s: 0x%lx", cases[i].what, cases[i].cmd);
	}
}

/* Every limit and feature the header documents, as the module answers it. */
TEST_F(device, check_extension)
{
	static const struct {
		const char *what;
		unsigned long cap;
		long value;
	} cases[] = {
		{ "max vCPUs", DIRTYRING_CAP_MAX_VCPUS, DIRTYRING_MAX_VCPUS },
		{ "max slots", DIRTYRING_CAP_MAX_SLOTS, DIRTYRING_MAX_SLOTS },
		{ "max slot pages", DIRTYRING_CAP_MAX_SLOT_PAGES,
		  DIRTYRING_MAX_SLOT_PAGES },
		{ "page size", DIRTYRING_CAP_PAGE_SIZE, 4096 },
		{ "ring min", DIRTYRING_CAP_RING_MIN_ENTRIES,
		  DIRTYRING_RING_MIN_ENTRIES },
		{ "ring max", DIRTYRING_CAP_RING_MAX_ENTRIES,
		  DIRTYRING_RING_MAX_ENTRIES },
		{ "reserve", DIRTYRING_CAP_RING_RESERVED_ENTRIES,
		  DIRTYRING_RING_RESERVED_ENTRIES },
		{ "max VMs", DIRTYRING_CAP_MAX_VMS, DIRTYRING_MAX_VMS },
		{ "max VMs per process", DIRTYRING_CAP_MAX_VMS_PER_PROCESS,
		  DIRTYRING_MAX_VMS_PER_PROCESS },
		{ "reset status", DIRTYRING_CAP_RESET_STATUS, 1 },
		{ "vCPU reopen", DIRTYRING_CAP_VCPU_REOPEN, 1 },
		{ "pinned relog", DIRTYRING_CAP_PINNED_RELOG, 1 },
		{ "unknown", 0, 0 },
		{ "unknown, large", ~0UL, 0 },
	};
	int vm = ioctl(self->fd, DIRTYRING_CREATE_VM, 0);
	unsigned int i;

	ASSERT_LE(0, vm);
	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		EXPECT_EQ(cases[i].value, ioctl(self->fd,
						DIRTYRING_CHECK_EXTENSION,
						cases[i].cap))
			TH_LOG("device: %s", cases[i].what);
		EXPECT_EQ(cases[i].value, ioctl(vm, DIRTYRING_CHECK_EXTENSION,
						cases[i].cap))
			TH_LOG("VM: %s", cases[i].what);
	}
	/* Half of RAM by default: some pages, and no more than RAM. */
	EXPECT_LT(0, ioctl(self->fd, DIRTYRING_CHECK_EXTENSION,
			   DIRTYRING_CAP_MAX_PINNED_PAGES));
	close(vm);
}

TEST(open_close_many)
{
	int i, fd;

	for (i = 0; i < 1000; i++) {
		fd = open(DEVICE_PATH, O_RDWR | O_CLOEXEC);
		ASSERT_LE(0, fd) TH_LOG("open #%d: %s", i, strerror(errno));
		ASSERT_EQ(0, close(fd));
	}
}

TEST_HARNESS_MAIN
