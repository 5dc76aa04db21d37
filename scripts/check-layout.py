#!/usr/bin/env python3
"""Checks the code layout rules that review cannot keep by eye.

1. No import cycle between the modules of a crate: no file imports from a
   file that imports it, directly or through others (a parent `mod.rs`
   re-exporting a child counts as importing it; declaring `mod x;` does not).
2. No source file over MAX_LINES lines, not counting its in-file
   `#[cfg(test)] mod tests` block.

Usage: scripts/check-layout.py [CRATE_SRC_DIR ...]   (default: src bench/src)
Exits 1 and names the modules or files when a rule is broken.
"""

import os
import re
import sys

MAX_LINES = 600

USE_RE = re.compile(r"\buse\s+([^;]+);")
PATH_RE = re.compile(r"\b((?:crate|super|self)(?:::(?:super|\w+|\{))+)")


def modules(src):
    """Maps each module path (a tuple) to its file."""
    mods = {}
    for d, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[0] == "bin":
                continue  # extra binaries are crates of their own
            if rel in (["lib"], ["main"]):
                mp = ()
            elif rel[-1] == "mod":
                mp = tuple(rel[:-1])
            else:
                mp = tuple(rel)
            # A crate with both lib.rs and main.rs: main.rs is its own crate.
            if mp == () and mp in mods and rel == ["main"]:
                continue
            mods[mp] = path
    return mods


def without_tests(text):
    i = text.find("#[cfg(test)]\nmod tests")
    return text if i < 0 else text[:i]


def expand_use(prefix, body):
    """`a::{b, c::d}` -> ["a::b", "a::c::d"]."""
    body = body.strip()
    if "{" not in body:
        return ["::".join(prefix + [body.split(" as ")[0].strip()])]
    i = body.index("{")
    head = body[:i].rstrip(":").strip()
    inner = body[i + 1 : body.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for part in parts:
        if part.strip():
            out += expand_use(prefix + ([head] if head else []), part)
    return out


def edges(mods):
    graph = {}
    for mp, path in mods.items():
        text = re.sub(r"//.*", "", without_tests(open(path).read()))
        paths = set()
        for m in USE_RE.finditer(text):
            paths.update(expand_use([], m.group(1).replace("\n", " ")))
        paths.update(m.group(1).rstrip(":{") for m in PATH_RE.finditer(text))
        targets = set()
        for p in paths:
            segs = [s for s in p.split("::") if s]
            if not segs:
                continue
            if segs[0] == "crate":
                base, segs = [], segs[1:]
            elif segs[0] in ("super", "self"):
                base = list(mp)
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super":
                        base = base[:-1]
                    segs = segs[1:]
            elif tuple(list(mp) + [segs[0]]) in mods:
                base = list(mp)  # a child module named without `self::`
            else:
                continue  # another crate
            for k in range(len(segs), -1, -1):
                t = tuple(base + segs[:k])
                if t in mods:
                    if t != mp:
                        targets.add(t)
                    break
        graph[mp] = targets
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def name(mp):
    return "::".join(mp) or "crate"


def main():
    roots = sys.argv[1:] or ["src", "bench/src"]
    bad = False
    for src in roots:
        mods = modules(src)
        graph = edges(mods)
        for comp in cycles(graph):
            bad = True
            print(f"{src}: import cycle between {', '.join(sorted(map(name, comp)))}:")
            for a in comp:
                for b in sorted(graph[a]):
                    if b in comp:
                        print(f"    {name(a)} -> {name(b)}")
        for path in sorted(mods.values()):
            lines = without_tests(open(path).read()).count("\n")
            if lines > MAX_LINES:
                bad = True
                print(f"{path}: {lines} lines without its tests (at most {MAX_LINES})")
    if bad:
        sys.exit(1)
    print(f"layout ok: no import cycles, no file over {MAX_LINES} lines ({', '.join(roots)})")


if __name__ == "__main__":
    main()
