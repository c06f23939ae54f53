"""One description of the node graph: launch files, console entry points and the process runner agree."""

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from adstack.errors import DataError
from adstack.launch_graph import load_graph
from adstack.paths import PACKAGE_ROOT


def setup_py_nodes():
    tree = ast.parse((PACKAGE_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "NODES":
            return dict(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no NODES list")


def test_every_node_has_a_console_entry_point_and_a_module_with_main():
    graphs = load_graph()
    assert set(graphs) == {"stack", "sim"}
    entry_points = setup_py_nodes()
    for specs in graphs.values():
        for spec in specs:
            assert entry_points.get(spec.executable) == spec.module, spec
            assert importlib.util.find_spec(spec.module) is not None, spec.module
            assert spec.params_path.is_file(), spec.params_path
    # The vehicle graph is the sim graph without the bridge.
    assert [s.name for s in graphs["stack"]] == [s.name for s in graphs["sim"] if s.name != "sim_bridge"]


def test_ros_args_carry_name_params_and_remappings():
    spec = next(s for s in load_graph()["stack"] if s.name == "tracker")
    args = spec.ros_args({"min_hits": 3})
    assert args[:3] == ["--ros-args", "-r", "__node:=tracker"]
    assert "--params-file" in args and str(spec.params_path) in args
    assert "input/objects:=/perception/object_recognition/detection/objects" in args
    assert args[-2:] == ["-p", "min_hits:=3"]


class _Recorder:
    """Stands in for launch/launch_ros, which exist only on a ROS 2 install (not on PyPI)."""

    def __init__(self):
        self.nodes = []

    def modules(self):
        launch = types.ModuleType("launch")
        launch.LaunchDescription = lambda actions: list(actions)
        launch_ros = types.ModuleType("launch_ros")
        actions = types.ModuleType("launch_ros.actions")

        def Node(**kwargs):
            self.nodes.append(kwargs)
            return kwargs
        actions.Node = Node
        launch_ros.actions = actions
        return {"launch": launch, "launch_ros": launch_ros, "launch_ros.actions": actions}


@pytest.mark.parametrize("graph", ["stack", "sim"])
def test_launch_files_start_exactly_the_described_graph(graph, monkeypatch):
    rec = _Recorder()
    for name, module in rec.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    path = PACKAGE_ROOT / "launch" / f"{graph}.launch.py"
    spec = importlib.util.spec_from_file_location(f"launch_file_{graph}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate_launch_description()
    expected = load_graph()[graph]
    assert [n["name"] for n in rec.nodes] == [s.name for s in expected]
    for node, s in zip(rec.nodes, expected):
        assert node["package"] == "adstack" and node["executable"] == s.executable
        assert dict(node["remappings"]) == s.remappings
        # the sim graph runs on the bridge's /clock: every other node gets use_sim_time
        sim_time = [{"use_sim_time": True}] if graph == "sim" and s.name != "sim_bridge" else []
        assert node["parameters"] == [str(s.params_path)] + sim_time


def test_graph_overrides_put_the_sim_graph_on_simulation_time(tmp_path):
    from adstack.launch_graph import graph_overrides
    from adstack.launch_runner import node_command
    overrides = graph_overrides("sim")
    assert set(overrides) == {s.name for s in load_graph()["sim"]} - {"sim_bridge"}
    assert all(v == {"use_sim_time": True} for v in overrides.values())
    assert graph_overrides("stack") == {}
    planner = next(s for s in load_graph()["sim"] if s.name == "planner")
    assert "use_sim_time:=true" in node_command(planner, overrides["planner"])
    bad = tmp_path / "graph.yaml"
    bad.write_text("nodes:\n  a: {executable: x, module: m, params: p}\ngraphs:\n  g: [a]\nsim_time:\n  g: clock\n")
    with pytest.raises(DataError, match="no node 'clock' to publish /clock"):
        graph_overrides("g", bad)


def test_a_malformed_description_is_a_clear_error(tmp_path):
    bad = tmp_path / "graph.yaml"
    bad.write_text("nodes:\n  a: {executable: x, module: m, params: p}\ngraphs:\n  g: [a, b]\n")
    with pytest.raises(DataError, match="unknown nodes"):
        load_graph(bad)
