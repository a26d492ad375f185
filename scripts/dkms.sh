#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The module through DKMS.
#   dkms.sh stage DIR       DIR/dirtyring-VERSION: what DKMS builds from
#   dkms.sh install KVER    into /usr/src and the system's DKMS tree
#   dkms.sh remove          from both, for every kernel
#   dkms.sh check KVER DIR  make check's dkms tier: add, build and install
#                           into scratch trees under DIR, then the QEMU
#                           runner boots KVER with the DKMS-built module
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
name=dirtyring
version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$top/dkms.conf")
api=$(sed -n 's/^#define DIRTYRING_API_VERSION \([0-9]*\)$/\1/p' "$top/include/uapi/linux/dirtyring.h")
[[ $version == "$api.0" ]] || { echo "dkms: dkms.conf says $version, the uAPI $api" >&2; exit 1; }

stage() {
	local dir=$1/$name-$version
	rm -rf "$dir"
	mkdir -p "$dir/kmod" "$dir/include/uapi/linux"
	cp "$top/dkms.conf" "$dir/"
	git -C "$top" ls-files -co --exclude-standard 'kmod/*.[ch]' kmod/Kbuild |
		xargs -I{} cp "$top/{}" "$dir/kmod/"
	cp "$top/include/uapi/linux/dirtyring.h" "$dir/include/uapi/linux/"
}

case ${1-} in
stage)
	stage "$2" ;;
install)
	stage /usr/src
	dkms add -m $name -v "$version" 2>/dev/null || true
	dkms build -m $name -v "$version" -k "$2"
	dkms install -m $name -v "$version" -k "$2" --force ;;
remove)
	dkms remove -m $name -v "$version" --all 2>/dev/null || true
	rm -rf "/usr/src/$name-$version" ;;
check)
	kver=$2 b=$(realpath -m "$3")
	rm -rf "$b"
	mkdir -p "$b/source" "$b/tree" "$b/install/$kver"
	stage "$b/source"
	d=(--dkmstree "$b/tree" --sourcetree "$b/source" --installtree "$b/install")
	report() { printf '%s\tdkms/%s\t%s\n' "$1" "$2" "${3-}"; }
	for step in add build install; do
		args=(-m $name -v "$version")
		[[ $step == add ]] || args+=(-k "$kver")
		if dkms "${d[@]}" "$step" "${args[@]}" > "$b/$step.log" 2>&1; then
			report PASS "$step"
		else
			report FAIL "$step" "$(tail -2 "$b/$step.log" | tr '\n\t' '  ')"
			cat "$b/$step.log" >&2
			exit 0
		fi
	done
	ko=$(find "$b/install" -name "$name.ko*" | head -1)
	[[ -n $ko ]] && report PASS installed "$ko" || { report FAIL installed "no $name.ko under $b/install"; exit 0; }
	case $ko in
	*.xz) xz -dkf "$ko"; ko=${ko%.xz} ;;
	*.zst) zstd -dqf "$ko"; ko=${ko%.zst} ;;
	esac
	# The DKMS build is the one the tests load.
	"$top/selftests/qemu/run" --kver "$kver" --module "$ko" --workdir "$b/qemu" \
		--results "$b/qemu.tsv" "$top/build/selftests/device_test" >&2 || true
	[[ -s $b/qemu.tsv ]] || { report FAIL qemu "the QEMU runner gave no results"; exit 0; }
	sed 's|\tqemu/|\tdkms/qemu/|' "$b/qemu.tsv" ;;
*)
	echo "usage: $0 stage DIR | install KVER | remove | check KVER DIR" >&2
	exit 2 ;;
esac
