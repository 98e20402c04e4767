"""The layers of fpfs: no import circle, and no import from a lower layer up to a higher one
(docs/ARCHITECTURE.md draws them); the C decoders' headers include each other without a
circle too.

How it is checked - from the source alone, nothing is imported:
- every `import` and `from ... import` statement of every module under fpfs/ is an edge,
  wherever it stands: at the top or inside a function (a lazy import is a dependency all
  the same), and under `if TYPE_CHECKING:` too (a type named from a higher layer is
  knowledge of it);
- `from PKG import NAME` is an import of the module PKG.NAME when there is one (the Cython
  extension fpfs._kernels included), else of PKG itself;
- a package's __init__ is a module of its own ("fpfs.store"). Python runs a package's
  __init__ before any of its submodules, but that is the interpreter's doing, not an edge.
A circle is a strongly connected set of more than one module. LAYERS puts every module in
one layer, lowest first; an import may point within its layer or down, never up. A new
module fails test_every_module_has_a_layer until it is given one.
Headers of cython_ext/ are read for their `#include "..."` lines the same way, and each
must compile on its own (it includes what it uses).
"""
from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sysconfig
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = {"fpfs._kernels"}          # built from cython_ext/ (setup.py)

# docs/ARCHITECTURE.md's layers 0-6, the top of 5 and 6 split finer.
LAYERS = [
    ("0 leaves", ["fpfs.errors", "fpfs.tempfiles", "fpfs.progress", "fpfs.metrics",
                  "fpfs._reference"]),
    ("1 Cython kernels", ["fpfs._kernels"]),
    ("2 formats, codecs, the store's object side",
     ["fpfs.formats", "fpfs.formats.*", "fpfs.codecs", "fpfs.codecs.*", "fpfs.store",
      "fpfs.store.objects", "fpfs.store.urls", "fpfs.store.local", "fpfs.store.s3",
      "fpfs.store.fetcher", "fpfs.store.disk_cache", "fpfs.store.breaker"]),
    ("3 container", ["fpfs.container"]),
    ("4 read path", ["fpfs.packed_file", "fpfs.parallel", "fpfs.readahead", "fpfs.cache",
                     "fpfs.bases", "fpfs.fpz_file"]),
    ("5 write path, the store's tree side",
     ["fpfs.compress", "fpfs.stream_compress", "fpfs.deltas", "fpfs.loading", "fpfs.stats",
      "fpfs.kv", "fpfs.kv.*", "fpfs.tree", "fpfs.warmup", "fpfs.store.manifest",
      "fpfs.store.remote_tree", "fpfs.store.publish", "fpfs.store.download"]),
    ("5 the public API (fpfs/__init__.py)", ["fpfs"]),
    ("5 options the command line and the mount launcher share", ["fpfs.options"]),
    ("6 mount", ["fpfs.mount", "fpfs.mount.*"]),
    ("6 subcommands", ["fpfs.commands", "fpfs.commands.*"]),
    ("6 command line", ["fpfs.cli"]),
]


def modules() -> Dict[str, Path]:
    found = {name: None for name in EXTENSIONS}
    for path in (ROOT / "fpfs").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _import_nodes(tree: ast.AST) -> Iterator[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def imports_of(name: str, path: Path, known: Dict[str, Path]) -> Set[str]:
    """The fpfs modules that module name imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known
                       else prefix for alias in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) if path is not None else set()
            for name, path in known.items()}


def circles(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """The strongly connected sets of more than one node (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[Set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(members)
    return found


def layer_of(name: str) -> List[int]:
    return [i for i, (_, patterns) in enumerate(LAYERS)
            if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def _describe(members: Set[str], graph: Dict[str, Set[str]]) -> str:
    return ", ".join(f"{a} -> {b}" for a in sorted(members)
                     for b in sorted(graph[a] & members))


def test_every_module_has_a_layer():
    unplaced = {name: layer_of(name) for name in modules() if len(layer_of(name)) != 1}
    assert not unplaced, f"modules in no layer or in several (add them to LAYERS): {unplaced}"


def test_no_import_circle():
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(_describe(c, graph) for c in found)


def test_no_import_points_up():
    graph = import_graph()
    upward = [f"{a} ({LAYERS[layer_of(a)[0]][0]}) -> {b} ({LAYERS[layer_of(b)[0]][0]})"
              for a in sorted(graph) for b in sorted(graph[a])
              if layer_of(a) and layer_of(b) and layer_of(b)[0] > layer_of(a)[0]]
    assert not upward, "imports from a lower layer up to a higher one:\n" + "\n".join(upward)


def test_the_graph_sees_what_the_code_imports(tmp_path):
    """The reader of the graph itself: relative, lazy, TYPE_CHECKING and extension imports
    are all found, so a passing check above means something."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from .. import _ext\n")
    source = tmp_path / "pkg" / "sub" / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "from . import helper, CONSTANT\n"
                      "from ..top import thing\n"
                      "if TYPE_CHECKING:\n    from pkg import typed\n"
                      "def f():\n    import pkg.lazy\n")
    known = {n: None for n in ("pkg", "pkg._ext", "pkg.sub", "pkg.sub.helper", "pkg.sub.mod",
                               "pkg.top", "pkg.typed", "pkg.lazy")}
    assert imports_of("pkg.sub.mod", source, known) == {
        "pkg.sub.helper", "pkg.sub", "pkg.top", "pkg.typed", "pkg.lazy"}
    assert imports_of("pkg.sub", tmp_path / "pkg" / "sub" / "__init__.py", known) == {"pkg._ext"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    graph = import_graph()
    assert "fpfs._kernels" in graph["fpfs.container"]               # the Cython extension


def test_c_headers_include_without_a_circle():
    headers = {p.name: p for p in (ROOT / "cython_ext").glob("*.h")}
    graph = {name: set(re.findall(r'^#include "([^"]+)"', path.read_text(), re.M)) & set(headers)
             for name, path in headers.items()}
    found = circles(graph)
    assert not found, "#include circles: " + "; ".join(_describe(c, graph) for c in found)


@pytest.mark.parametrize("header", sorted(p.name for p in (ROOT / "cython_ext").glob("*.h")))
def test_c_header_includes_what_it_uses(header, tmp_path):
    """Each header compiles on its own: it does not lean on names that a header including
    it happened to define first (fpfs_rans32.h once used fpfs_decode.h's error codes so)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    source = tmp_path / "one_header.c"
    source.write_text(f'#include "{header}"\n')
    res = subprocess.run([cc, "-fsyntax-only", "-Werror=implicit-function-declaration",
                          "-I", str(ROOT / "cython_ext"), str(source)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
