/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Differences between the kernel versions the module builds against
 * (Debian 12's 6.1 is the reference).  Everything version-dependent lives
 * here so the rest of the module reads as one version.
 */
#ifndef _DIRTYRING_COMPAT_H
#define _DIRTYRING_COMPAT_H

#include <linux/version.h>

#endif /* _DIRTYRING_COMPAT_H */
