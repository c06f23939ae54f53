"""ament_python package ``adstack``: installs the stage packages, the launch files and ``adstack``."""

from glob import glob

from setuptools import find_packages, setup

# One console entry point per node, so `ros2 run adstack <executable>` works on a ROS 2 install.
# tests/test_launch_graph.py checks this list against launch/graph.yaml.
NODES = [
    ("adstack_sim_bridge", "sim.bridge_node"),
    ("adstack_map_server", "hdmap.map_server_node"),
    ("adstack_lidar_detector", "perception.lidar_node"),
    ("adstack_tracker", "fusion.tracking_node"),
    ("adstack_planner", "planning.planning_node"),
    ("adstack_controller", "control.control_node"),
]

PACKAGES = ["adstack", "perception", "fusion", "planning", "control", "hdmap", "sim"]

setup(
    name="adstack",
    version="0.1.0",
    packages=find_packages(include=PACKAGES + [f"{p}.*" for p in PACKAGES]),
    package_data={**{p: ["config/*.yaml", "*.md", "models/**/*", "routes/*.xml"] for p in PACKAGES},
                  "adstack.msgs": ["*/msg/*.msg", "*.md", "*.txt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/adstack"]),
        ("share/adstack", ["package.xml"]),
        ("share/adstack/launch", glob("launch/*.py") + glob("launch/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="adstack developers",
    description="Autonomous-driving perception and planning stack",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={"console_scripts": ["adstack = adstack.cli:main"] + [f"{exe} = {module}:main" for exe, module in NODES]},
)
