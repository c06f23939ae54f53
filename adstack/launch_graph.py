"""The node graph description (launch/graph.yaml), shared by the launch files and ``adstack launch``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adstack.config import load_yaml
from adstack.errors import DataError
from adstack.paths import PACKAGE_ROOT


def graph_file() -> Path:
    """The description in the source tree, or where ament installs it (share/adstack/launch)."""
    for candidate in (PACKAGE_ROOT / "launch" / "graph.yaml", Path(__file__).resolve().parent.parent / "launch" / "graph.yaml"):
        if candidate.is_file():
            return candidate
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("adstack")) / "launch" / "graph.yaml"
    except Exception:
        return PACKAGE_ROOT / "launch" / "graph.yaml"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    executable: str
    module: str
    params: str
    remappings: dict = field(default_factory=dict)

    @property
    def params_path(self) -> Path:
        return PACKAGE_ROOT / self.params

    def ros_args(self, extra_params: dict | None = None) -> list[str]:
        """``--ros-args`` for a plain process: node name, parameter file, remappings, overrides."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.params_path.is_file():
            args += ["--params-file", str(self.params_path)]
        for src, dst in self.remappings.items():
            args += ["-r", f"{src}:={dst}"]
        for key, value in (extra_params or {}).items():
            args += ["-p", f"{key}:={value}"]
        return args


def load_graph(path: str | Path | None = None) -> dict[str, list[NodeSpec]]:
    """``{graph name: [NodeSpec, ...]}``; a malformed description is a DataError naming the problem."""
    path = Path(path) if path else graph_file()
    data = load_yaml(path)
    nodes_raw, graphs_raw = data.get("nodes"), data.get("graphs")
    if not isinstance(nodes_raw, dict) or not isinstance(graphs_raw, dict):
        raise DataError("needs the mappings 'nodes' and 'graphs'", path)
    nodes = {}
    for name, spec in nodes_raw.items():
        missing = [k for k in ("executable", "module", "params") if k not in (spec or {})]
        if missing:
            raise DataError(f"node {name!r} lacks {missing}", path)
        nodes[name] = NodeSpec(name, spec["executable"], spec["module"], spec["params"], dict(spec.get("remappings") or {}))
    graphs = {}
    for gname, members in graphs_raw.items():
        unknown = [m for m in members if m not in nodes]
        if unknown:
            raise DataError(f"graph {gname!r} names unknown nodes {unknown}", path)
        graphs[gname] = [nodes[m] for m in members]
    return graphs


def graph_overrides(graph: str, path: str | Path | None = None) -> dict[str, dict]:
    """Parameters the graph itself sets on its nodes, ``{node: {param: value}}``, on top of each
    node's parameter file: ``use_sim_time`` for every node but the clock's publisher of a graph
    listed under ``sim_time``."""
    path = Path(path) if path else graph_file()
    data = load_yaml(path)
    graphs = load_graph(path)
    if graph not in graphs:
        raise DataError(f"no graph {graph!r} (graphs: {sorted(graphs)})", path)
    sim_time = data.get("sim_time") or {}
    if not isinstance(sim_time, dict):
        raise DataError("'sim_time' must map a graph to the node that publishes /clock", path)
    clock = sim_time.get(graph)
    if clock is None:
        return {}
    names = [n.name for n in graphs[graph]]
    if clock not in names:
        raise DataError(f"sim_time: graph {graph!r} has no node {clock!r} to publish /clock", path)
    return {name: {"use_sim_time": True} for name in names if name != clock}


def all_nodes(path: str | Path | None = None) -> list[NodeSpec]:
    seen = {}
    for members in load_graph(path).values():
        for node in members:
            seen[node.name] = node
    return list(seen.values())
