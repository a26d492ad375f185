# SPDX-License-Identifier: GPL-2.0
# dirtyring: one entry point for the module, the library and every test.
#
#   make / make all   build the module, the selftests and libdirtyring
#   make check        every test tier, ending with "N passed, N failed"
#   make demo         the main job (see README.md)
#   make bench        benchmarks, as ratios against baselines of the same run
#   make stress       on the debug kernel: the ground-truth stress at STRESS_SCALE
#                     (default 4) times make check's work, then CHAOS_SECONDS (600)
#                     of chaos_test
#   make lint         checkpatch --strict and clang-format only
#   make patches      patches/: the module as an in-tree series (never edit it)
#   make dkms-install / dkms-remove   the module through DKMS, for KVER
#   make install      libdirtyring for a VMM (PREFIX, DESTDIR)
#   make install-module   dirtyring.ko into /lib/modules/$(KVER)/updates
#   make deps         the Debian packages all of this needs (every target calls it)
#
# KVER: the kernel the module is built for and the tests boot; defaults to
# the one Debian's linux-image-amd64 depends on (not the running kernel).

PREFIX ?= /usr/local
DESTDIR ?=
BUILD := $(CURDIR)/build
LINUX_SOURCE := $(BUILD)/linux-source
# Recursive on purpose: evaluated only in recipes, after `deps` installed
# the kernel packages it reads.
kver = $(or $(KVER),$(shell scripts/kver.sh))
kdir = /lib/modules/$(kver)/build
cmake_configure = cmake -S userspace -B $(1) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(2) > $(1).configure.log \
	|| { cat $(1).configure.log; exit 1; }

.PHONY: all deps linux-source module module-nostats selftests userspace userspace-asan userspace-tsan check lint demo \
	bench stress install install-module clean patches dkms-install dkms-remove

STRESS_SCALE ?= 4
CHAOS_SECONDS ?= 600

all: module selftests userspace

deps:
	@scripts/deps.sh

linux-source: deps
	@scripts/linux-source.sh $(LINUX_SOURCE)

module: deps
	$(MAKE) -C $(kdir) M=$(CURDIR)/kmod modules

# The same sources with the statistics of the fault path compiled out, for
# make bench's measure of what they cost (selftests/dirtyring/stats_bench.c).
NOSTATS := $(BUILD)/kmod-nostats
module-nostats: deps
	@mkdir -p $(NOSTATS)
	cp kmod/Kbuild kmod/*.c kmod/*.h $(NOSTATS)/
	$(MAKE) -C $(kdir) M=$(NOSTATS) KCFLAGS="-DDR_NO_STATS -I$(CURDIR)/include/uapi" modules
	cp $(NOSTATS)/dirtyring.ko $(NOSTATS)/dirtyring-nostats.ko

selftests: linux-source
	$(MAKE) -C selftests/dirtyring KSFT=$(LINUX_SOURCE) UAPI=$(CURDIR)/include/uapi \
		OUTPUT=$(BUILD)/selftests

userspace: deps
	@mkdir -p $(BUILD)
	@test -f $(BUILD)/cxx/CMakeCache.txt || $(call cmake_configure,$(BUILD)/cxx)
	cmake --build $(BUILD)/cxx -j$$(nproc)

userspace-asan: deps
	@mkdir -p $(BUILD)
	@test -f $(BUILD)/cxx-asan/CMakeCache.txt || \
		$(call cmake_configure,$(BUILD)/cxx-asan,-DDIRTYRING_SANITIZE=address$(,)undefined)
	cmake --build $(BUILD)/cxx-asan -j$$(nproc)

userspace-tsan: deps
	@mkdir -p $(BUILD)
	@test -f $(BUILD)/cxx-tsan/CMakeCache.txt || \
		$(call cmake_configure,$(BUILD)/cxx-tsan,-DDIRTYRING_SANITIZE=thread)
	cmake --build $(BUILD)/cxx-tsan -j$$(nproc)

check: all userspace-asan userspace-tsan
	@scripts/check.sh

lint: linux-source
	@scripts/lint.sh $(LINUX_SOURCE) | grep -v '^PASS' || echo "lint: clean"

demo: all
	@scripts/demo.sh

bench: all module-nostats
	@scripts/bench.sh

# On the debug kernel: the ground-truth stress, then CHAOS_SECONDS of chaos.
stress: module selftests
	@set -e; built=$$(scripts/debug-kernel.sh); set -- $$built; \
	selftests/qemu/run --kernel $$1 --module $$2 --kmemleak \
		--env DIRTYRING_STRESS_SCALE=$(STRESS_SCALE) --env DIRTYRING_CHAOS_SECONDS=$(CHAOS_SECONDS) \
		--test-timeout 3600 --workdir $(BUILD)/qemu-stress \
		$(BUILD)/selftests/stress_test $(BUILD)/selftests/chaos_test

patches: deps
	@scripts/patches.sh > /dev/null
	@echo "patches: $$(ls patches | wc -l) files in patches/"

dkms-install: deps
	scripts/dkms.sh install $(kver)

dkms-remove:
	scripts/dkms.sh remove

install: userspace
	DESTDIR=$(DESTDIR) cmake --install $(BUILD)/cxx --prefix $(PREFIX)

install-module: module
	$(MAKE) -C $(kdir) M=$(CURDIR)/kmod INSTALL_MOD_PATH=$(DESTDIR) modules_install

clean:
	-$(MAKE) -C $(kdir) M=$(CURDIR)/kmod clean
	rm -rf $(BUILD)

, := ,
