"""The indexed folders as a tree, with how many images each holds (itself and below): the web UI's folder
tree. A node's ``where`` clause (``folder = "/photos/2023"``) selects it and everything under it, as the
``folder`` filter field does, so a node's ``count`` is what a click on it shows.

>>> tree = folder_tree(ix.db)                            # doctest: +SKIP
>>> tree.path, tree.count, [c.name for c in tree.children]  # doctest: +SKIP
('/photos', 1200, ['2022', '2023'])
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from .filters import compile_where
from .store.library_sql import folder_counts


@dataclass
class FolderNode:
    """One folder: ``count`` files in it and below it, ``files`` directly in it, sub-folders by name."""

    name: str
    path: str
    count: int = 0
    files: int = 0
    children: list[FolderNode] = field(default_factory=list)

    @property
    def where(self) -> str:
        return 'folder = "' + self.path.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "count": self.count, "files": self.files, "where": self.where,
                "children": [c.to_dict() for c in self.children]}  # fmt: skip


def folder_tree(db, *, where: str | None = None) -> FolderNode | None:
    """The folders of the indexed files ``where`` selects, under their deepest common folder (the root);
    None when nothing matches or the index is a catalog (no folders)."""
    if db.kind == "catalog":
        return None
    cond, params = compile_where(where) if where and where.strip() else ("1", [])
    return build_tree(folder_counts(db, cond, params))


def build_tree(counts: list[tuple[str, int]]) -> FolderNode | None:
    """The tree of ``(folder, files in it)`` pairs (absolute POSIX folders)."""
    counts = [(f or "/", n) for f, n in counts if n]
    if not counts:
        return None
    top = posixpath.commonpath([f for f, _ in counts]) if all(f.startswith("/") for f, _ in counts) else ""
    root = FolderNode(posixpath.basename(top) or top or "/", top)
    nodes = {top: root}
    for folder, n in counts:
        node = _node(nodes, folder)
        node.files += n
    _total(root)
    return root


def _node(nodes: dict[str, FolderNode], folder: str) -> FolderNode:
    found = nodes.get(folder)
    if found is None:
        up = posixpath.dirname(folder)
        parent = _node(nodes, up) if up != folder else nodes[next(iter(nodes))]  # (outside the root: under it)
        found = nodes[folder] = FolderNode(posixpath.basename(folder), folder)
        parent.children.append(found)
    return found


def _total(node: FolderNode) -> int:
    node.children.sort(key=lambda c: c.name.lower())
    node.count = node.files + sum(_total(c) for c in node.children)
    return node.count
