#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
# patches-maintainers.py WHO PATH: adds "F: PATH" to the DIRTYRING DRIVER
# entry of ./MAINTAINERS, creating the entry (maintainer WHO) after the
# DIRECTORY NOTIFICATION one if it is not there; F: lines stay sorted.
import sys

who, path = sys.argv[1:]
text = open("MAINTAINERS").read()
head = "\nDIRTYRING DRIVER\n"
if head not in text:
    anchor = "F:\tinclude/linux/dnotify.h\n"
    if anchor not in text:
        sys.exit("patches-maintainers: no DNOTIFY entry to follow")
    entry = f"{head}M:\t{who}\nL:\tkvm@vger.kernel.org\nS:\tMaintained\n"
    text = text.replace(anchor, anchor + entry, 1)
start = text.index(head) + len(head)
end = text.index("\n\n", start) + 1
lines = text[start:end].splitlines()
files = sorted({line for line in lines if line.startswith("F:")} | {f"F:\t{path}"})
lines = [line for line in lines if not line.startswith("F:")] + files
open("MAINTAINERS", "w").write(text[:start] + "\n".join(lines) + "\n" + text[end:])
