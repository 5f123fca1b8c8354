#!/usr/bin/python3
"""Build step: turns a file into a C source defining `const char NAME[]`
(NUL-terminated) and `const size_t NAME_len`, so that the dashboard page
is part of the binary.  Usage: embed.py INPUT OUTPUT NAME"""
import sys

src, dst, name = sys.argv[1:4]
data = open(src, "rb").read()
with open(dst, "w") as out:
    out.write("/* Generated from %s by embed.py: do not edit. */\n" % src.split("/")[-1])
    out.write("#include <stddef.h>\n")
    out.write("const char %s[] = {\n" % name)
    for i in range(0, len(data), 16):
        out.write("  " + "".join("%d," % b for b in data[i:i + 16]) + "\n")
    out.write("  0};\n")
    out.write("const size_t %s_len = %d;\n" % (name, len(data)))
