#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
# The licence of every file, by where it is (README.md, "Licences"), and a
# check that each source file says it in an SPDX line near its top.
#   spdx.py check        PASS/FAIL lines for lint
#   spdx.py expected F   the identifier F must carry
import subprocess
import sys

# First match wins.
RULES = [
    ("include/uapi/", "GPL-2.0 WITH Linux-syscall-note"),
    ("Documentation/netlink/", "((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause)"),
    ("userspace/", "LGPL-2.1-or-later"),
    ("", "GPL-2.0"),
]
# Not sources: licence texts, generated patches, prose, tool settings.
SKIP_PREFIX = ("LICENSES/", "patches/", "upstream/")
SKIP_SUFFIX = (".md", ".clang-format", ".gitignore")


def expected(path):
    for prefix, ident in RULES:
        if path.startswith(prefix):
            return ident
    raise AssertionError(path)


def declared(path):
    with open(path, errors="replace") as f:
        head = [f.readline() for _ in range(3)]
    for line in head:
        if "SPDX-License-Identifier:" in line:
            ident = line.split("SPDX-License-Identifier:", 1)[1].strip()
            for end in ("*/", "-->"):
                ident = ident.removesuffix(end).strip()
            return ident
    return None


def main():
    if sys.argv[1:2] == ["expected"]:
        print(expected(sys.argv[2]))
        return 0
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split()
    for path in files:
        if path.startswith(SKIP_PREFIX) or path.endswith(SKIP_SUFFIX):
            continue
        want, have = expected(path), declared(path)
        if have == want:
            print(f"PASS\tlint/spdx:{path}\t")
        elif have is None:
            print(f"FAIL\tlint/spdx:{path}\tno SPDX-License-Identifier line (want {want})")
        else:
            print(f"FAIL\tlint/spdx:{path}\t{have}, want {want}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
