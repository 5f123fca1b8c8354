#!/usr/bin/python3
"""baton.yaml(5) from docs/config.md, so that the man page and the reference
cannot disagree: headings become sections, each table row a tagged
paragraph (key, default, meaning), code blocks stay as written.  Reads the
markdown file named on the command line, writes roff to stdout.  Only the
markdown that docs/config.md uses is understood."""
import re
import sys


def ascii(text):
    """Characters beyond ASCII as groff's \\[uXXXX] escapes (no input encoding needed)."""
    return "".join(c if ord(c) < 128 else "\\[u%04X]" % ord(c) for c in text)


def inline(text):
    """Markdown inline markup as roff: `code` bold, **strong** bold, links as text."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    text = re.sub(r"`([^`]*)`", lambda m: "\\fB" + m.group(1) + "\\fR", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = text.replace("-", "\\-")
    return ascii(text)


def line(text):
    """One roff text line: a leading '.' or "'" must not read as a request."""
    return ("\\&" + text) if text[:1] in (".", "'") else text


def cells(row):
    # "|" inside a cell is written "\|" in the markdown.
    parts = re.split(r"(?<!\\)\|", row.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def convert(md):
    out = ['.TH BATON.YAML 5 "" "baton" "File Formats"',
           ".SH NAME",
           "baton.yaml \\- the configuration file of baton(1): stages, pipelines, policies",
           ".SH DESCRIPTION"]
    lines = md.splitlines()
    i = 0
    in_code = False
    header = None
    while i < len(lines):
        ln = lines[i]
        i += 1
        if ln.startswith("```"):
            in_code = not in_code
            out.append(".PP\n.nf" if in_code else ".fi")
            continue
        if in_code:
            out.append(line(ascii(ln.replace("\\", "\\e"))))
            continue
        if ln.startswith("# "):
            continue  # the title: NAME says it
        if ln.startswith("## "):
            out.append(".SH " + inline(ln[3:]).upper())
            continue
        if ln.startswith("### "):
            out.append(".SS " + inline(ln[4:]))
            continue
        if ln.startswith("|"):
            row = cells(ln)
            if header is None:
                header = [c.lower() for c in row]
            elif not set("".join(row)) <= set("-: "):
                first = row[0]
                out.append(".TP\n" + line(inline(first)))
                rest = [(h, c) for h, c in zip(header[1:], row[1:]) if c]
                text = " ".join(("(%s: %s)" % (h, c)) if h == "default" else c for h, c in rest)
                out.append(line(inline(text)))
            continue
        header = None
        if not ln.strip():
            out.append(".PP")
            continue
        if re.match(r"^\s*- ", ln):
            out.append(".IP \\(bu 2")
            ln = re.sub(r"^\s*- ", "", ln)
        out.append(line(inline(ln.strip())))
    out += [".SH SEE ALSO", ".BR baton (1)"]
    # Collapse runs of paragraph breaks.
    text = "\n".join(out)
    text = re.sub(r"(\.PP\n)+", ".PP\n", text)
    return text + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(convert(f.read()))
