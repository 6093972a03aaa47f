"""Readability figures of Python files, as the readability issue measured them: docstring vs
comment lines, the share of lines over 100 characters, median and 95th-percentile line width, and
the number of train.py's flags.

    python bench/readability.py                     # the README's reading path, then the whole tree
    python bench/readability.py tgrpo.py rewards.py # given files, and their total

Docstring lines are the lines of module, class and function docstrings (ast); comment lines are
lines holding a `#` comment token (tokenize), inline ones included. Widths count the characters of
non-blank lines. Prints a Markdown table; the figures depend on nothing but the files.
"""
from __future__ import annotations

import ast
import io
import statistics
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READING_PATH = ("train.py", "loader.py", "rollout.py", "rewards.py", "tgrpo.py")


def docstring_lines(tree: ast.AST) -> int:
    """Lines covered by module, class and function docstrings."""
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                n += body[0].end_lineno - body[0].lineno + 1
    return n


def comment_lines(text: str) -> int:
    """Lines that hold a comment token."""
    rows = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type == tokenize.COMMENT}
    return len(rows)


def figures(paths: list[Path]) -> dict:
    """Totals over `paths`: docstring, comment and non-blank lines, the over-100 share, widths."""
    doc = com = 0
    widths = []
    for p in paths:
        text = p.read_text()
        doc += docstring_lines(ast.parse(text))
        com += comment_lines(text)
        widths += [len(line) for line in text.splitlines() if line.strip()]
    widths.sort()
    p95 = widths[min(len(widths) - 1, int(0.95 * len(widths)))] if widths else 0
    over = sum(w > 100 for w in widths)
    return {"doc": doc, "comment": com, "lines": len(widths),
            "over_100": 100.0 * over / max(1, len(widths)),
            "median": statistics.median(widths) if widths else 0, "p95": p95}


def class_fields(module: str, name: str, inherited: bool = True) -> list[str]:
    """Field names of class `name` of ROOT/module.py, with (`inherited`) those of its bases written
    as `X` (the same module) or `mod.X` (ROOT/mod.py)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    names = [s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)]
    for base in cls.bases if inherited else ():
        where, base_name = ((base.value.id, base.attr) if isinstance(base, ast.Attribute)
                            else (module, base.id))
        names += class_fields(where, base_name)
    return names


def row(name: str, f: dict) -> str:
    ratio = f["doc"] / max(1, f["comment"])
    return (f"| {name} | {f['lines']} | {f['doc']:,} : {f['comment']:,} ({ratio:.1f} : 1) | "
            f"{f['over_100']:.1f} % | {f['median']:g} / {f['p95']} |")


def main(argv: list[str]) -> None:
    print("| files | non-blank lines | docstring : comment lines | lines over 100 | "
          "median / 95th width |")
    print("|---|---|---|---|---|")
    if argv:
        paths = [Path(a) for a in argv]
        for p in paths:
            print(row(str(p), figures([p])))
        print(row("total", figures(paths)))
        return
    for name in READING_PATH:
        print(row(name, figures([ROOT / name])))
    print(row("reading path", figures([ROOT / n for n in READING_PATH])))
    tree = sorted(p for p in ROOT.rglob("*.py") if ".venv" not in p.parts)
    print(row("whole tree (*.py)", figures(tree)))
    own, flags = class_fields("train", "Config", False), set(class_fields("train", "Config"))
    print(f"\ntrain.py Config: {len(own)} fields declared in train.py; {len(flags)} flags with "
          f"its bases'")


if __name__ == "__main__":
    main(sys.argv[1:])
