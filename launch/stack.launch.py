"""ROS 2 launch file for the vehicle graph, generated from launch/graph.yaml (the one description)."""

from launch import LaunchDescription
from launch_ros.actions import Node

from adstack.launch_graph import graph_overrides, load_graph


def generate_launch_description(graph: str = "stack") -> LaunchDescription:
    overrides = graph_overrides(graph)  # use_sim_time where the graph runs on /clock
    return LaunchDescription([
        Node(package="adstack", executable=spec.executable, name=spec.name, output="screen",
             parameters=([str(spec.params_path)] if spec.params_path.is_file() else [])
             + ([overrides[spec.name]] if spec.name in overrides else []),
             remappings=list(spec.remappings.items()))
        for spec in load_graph()[graph]
    ])
