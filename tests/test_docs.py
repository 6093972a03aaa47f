"""Every reference a reader follows resolves in a fresh clone: each "notes §N" (with its step, item
or named sub-heading) cited in the code or the README exists in docs/video-r1.md, and each departure
ID in a module header is a row of docs/departures.md."""
import re

from conftest import ROOT

NOTES = (ROOT / "docs" / "video-r1.md").read_text()
DEPARTURES = (ROOT / "docs" / "departures.md").read_text()
# what a reader opens
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("bench/**/*.md")])
SOURCES = sorted(list(ROOT.glob("*.py")) + list(ROOT.glob("builtin/*.py"))
                 + list((ROOT / "bench").glob("*.py"))
                 + list((ROOT / "tests").glob("*.py"))
                 + [p for p in PAGES if p.name != "video-r1.md"])


def sections() -> dict[str, str]:
    """Section number -> its text (from its '## N.' heading to the next '## ')."""
    parts = re.split(r"^## (\d+)\. ", NOTES, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def citations():
    """(file, cited text after '§') for every 'notes §...' and every bare '§' continuing such a
    citation."""
    for path in SOURCES:
        text = path.read_text()
        for m in re.finditer(r"notes (§[^;)\n]*)", text):
            for part in re.findall(r"§(\d+(?: (?:step|steps|item|items) [\d–\-, ]+)?"
                                   r"(?: \"[^\"]+\")?)", m.group(1)):
                yield path.name, part


def test_every_cited_section_step_item_and_heading_exists():
    secs, missing, cites = sections(), [], list(citations())
    assert len(cites) > 100                                           # the scan finds the citations
    for name, cite in cites:
        m = re.match(r"(\d+)(?: (step|steps|item|items) ([\d–\-, ]+))?(?: \"([^\"]+)\")?", cite)
        num, kind, numbers, heading = m.groups()
        body = secs.get(num)
        if body is None:
            missing.append((name, cite))
            continue
        for k in re.findall(r"\d+", numbers or ""):
            if not re.search(rf"^{k}\. \*\*", body, flags=re.M):
                missing.append((name, cite))
        if heading and f"### {heading}" not in body:
            missing.append((name, cite))
    assert not missing, missing


def test_departure_ids_in_module_headers_are_rows_of_the_table():
    rows = set(re.findall(r"^\| ([TRSLDEQH]\d+) \|", DEPARTURES, flags=re.M))
    assert len(rows) > 40
    listed = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("builtin/*.py")]:
        doc = path.read_text().split('"""')[1] if path.read_text().startswith('"""') else ""
        listed |= set(re.findall(r"^  ([TRSLDEQH]\d+) ", doc, flags=re.M))
    assert listed and listed <= rows, listed - rows


def test_every_link_in_the_readme_and_docs_resolves():
    """Each relative Markdown link or image (`[text](path)`, `![alt](path)`) of the README, docs/
    and bench/ pages points at a file or folder of the repository (a moved section must not leave a
    dead link)."""
    dead, seen = [], 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            seen += 1
            if not (page.parent / target.split("#")[0]).exists():
                dead.append(f"{page.relative_to(ROOT)}: {target}")
    assert seen > 10 and not dead, dead


def test_no_reference_outside_the_repository():
    for path in [p for p in SOURCES if p.name != "test_docs.py"]:
        text = path.read_text()
        assert "/work/shared" not in text and "reference §" not in text, path.name
        # issues as owner/repo#N or Video-R1#N
        assert not re.search(r"(?<![\w/-])#\d{2,}\b", text), path.name


def test_layers_no_entry_point_imported_and_no_import_cycle():
    """No module of the pipeline (the repository root) or of the built-in world (builtin/) imports
    an entry point (train.py, sft.py, eval.py), so the entry points never import each other either;
    the entry points reach the built-in world only through its one entry point (builtin/__init__.py:
    builtin.resolve), common.py takes only its constants (TINY_MEDIA, TINY_MODELS, RECORD), and no
    other module of the pipeline reaches it; the built-in world never imports common.py; and the
    modules have no import cycle, function-level imports included (importing builtin.X runs
    builtin/__init__.py first)."""
    import ast
    mods = ({p.stem: p for p in ROOT.glob("*.py")}
            | {f"builtin.{p.stem}": p for p in ROOT.glob("builtin/*.py")})
    package = "builtin.__init__"
    graph, from_builtin = {}, {}
    for name, path in mods.items():
        deps, names = set(), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} | {a.name.split(".")[0] for a in node.names}
                names |= {a.name for a in node.names if a.name.split(".")[0] == "builtin"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= ({node.module, node.module.split(".")[0]}
                         | {f"{node.module}.{a.name}" for a in node.names})
                if node.module.split(".")[0] == "builtin":
                    names |= {a.name for a in node.names}
        if not name.startswith("builtin.") and any(d.split(".")[0] == "builtin" for d in deps):
            deps.add(package)       # importing builtin or builtin.X runs builtin/__init__.py first
        graph[name] = {d for d in deps if d in mods and d != name}
        from_builtin[name] = names
    assert len([m for m in mods if m.startswith("builtin.")]) == 7      # __init__ and six modules
    entry = {"train", "sft", "eval"}
    assert all(not (graph[m] & entry) for m in graph), {m: graph[m] & entry for m in graph
                                                        if graph[m] & entry}
    into_builtin = {m: {d for d in graph[m] if d.startswith("builtin.")} for m in graph
                    if not m.startswith("builtin.")}
    into_builtin = {m: ds for m, ds in into_builtin.items() if ds}
    assert set(into_builtin) <= entry | {"blind_filter", "common"}, into_builtin
    through_resolve = {m: ds for m, ds in into_builtin.items() if m != "common"}
    assert all(ds == {package} for ds in through_resolve.values()), through_resolve
    constants = from_builtin["common"]
    assert constants and all(n.isupper() for n in constants), constants
    assert not [m for m in graph if m.startswith("builtin.") and "common" in graph[m]]

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for m in graph[todo.pop()] - seen:
                seen.add(m)
                todo.append(m)
        return seen
    assert not [m for m in graph if m in reach(m)]


def step_calls() -> list[tuple[str, str]]:
    """(module, function) of every call into a top-level module that one T-GRPO step makes, from the
    sample to the optimizer step, in source order: train.step, with train.py's own helpers
    (rule_rewards, advantages, train_step) read in place. A method of an object that main built from
    a module (`run.prefetch`, built by `loader.Prefetcher(...)`) counts as that module's."""
    import ast
    tree = ast.parse((ROOT / "train.py").read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    mods = {p.stem for p in ROOT.glob("*.py")}
    owner = {}
    for node in ast.walk(funcs["main"]):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value.func, ast.Attribute)
                and isinstance(node.value.func.value, ast.Name)
                and node.value.func.value.id in mods):
            owner[node.targets[0].id] = node.value.func.value.id

    def calls(nodes):
        found = sorted((n for root in nodes for n in ast.walk(root) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))
        for c in found:
            f = c.func
            if isinstance(f, ast.Name) and f.id in ("rule_rewards", "advantages", "train_step"):
                yield from calls(funcs[f.id].body)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) \
                    and isinstance(f.value.value, ast.Name) and f.value.value.id == "run":
                if f.value.attr in owner:                     # run.prefetch.take(...)
                    yield owner[f.value.attr], f.attr
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                mod = f.value.id if f.value.id in mods else owner.get(f.value.id)
                if mod:
                    yield mod, f.attr

    body = funcs["step"].body
    end = next(i for i, s in enumerate(body) if "train_step(" in ast.unparse(s))
    # main's loop calls it
    assert any("step(" in ast.unparse(s) for s in next(n for n in ast.walk(funcs["main"])
                                                       if isinstance(n, ast.For)).body)
    return list(calls(body[:end + 1]))


def test_one_step_reads_in_five_files_in_order_without_returning():
    """README "Reading one step": the paper's step is train.py, then loader.py, rollout.py,
    rewards.py and tgrpo.py, each entered once: its calls come in one run, in that order.
    distributed.py (sharding and collectives) and common.py (the clip-and-step guard shared with
    sft.py) are plumbing, named at the line; tracking.py (the step's clock) and records.py (the
    rollout/train log-prob gap) observe, named at the line."""
    plumbing = ("distributed", "common", "tracking", "records")
    seq = [m for m, _ in step_calls() if m not in plumbing]
    runs = [m for i, m in enumerate(seq) if i == 0 or seq[i - 1] != m]
    assert runs == ["loader", "rollout", "rewards", "tgrpo"], (runs, step_calls())
    assert ("tgrpo", "advantages") in step_calls() and ("tgrpo", "policy_loss") in step_calls()
    assert {m for m, _ in step_calls()} <= {"loader", "rollout", "rewards", "tgrpo", *plumbing}
