/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dirtyring: dirty-page rings for live migration.
 *
 * This header is the only contract between the dirtyring module and user
 * space.  Every structure carries a flags or reserved word that must be zero,
 * so that the ABI can grow; the API version answers what this header knows.
 */
#ifndef _UAPI_LINUX_DIRTYRING_H
#define _UAPI_LINUX_DIRTYRING_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* Bumped on every incompatible change of this header. */
#define DIRTYRING_API_VERSION 1

/* 0xDC is unused in Documentation/userspace-api/ioctl/ioctl-number.rst. */
#define DIRTYRING_IOCTL_TYPE 0xDC

/*
 * On /dev/dirtyring: returns DIRTYRING_API_VERSION as the ioctl's return
 * value (as KVM_GET_API_VERSION does); the argument must be 0.
 */
#define DIRTYRING_GET_API_VERSION _IO(DIRTYRING_IOCTL_TYPE, 0x00)

#endif /* _UAPI_LINUX_DIRTYRING_H */
