"""Message classes for the node graph, resolved once (rclpy message types; Autoware's are built by
scripts/build_msgs.sh into the venv, or come from apt on a ROS 2 install)."""

from __future__ import annotations

from adstack.ros_convert import RclpyFactory

TYPES = {
    "PointCloud2": "sensor_msgs/msg/PointCloud2",
    "Odometry": "nav_msgs/msg/Odometry",
    "Path": "nav_msgs/msg/Path",
    "String": "std_msgs/msg/String",
    "MarkerArray": "visualization_msgs/msg/MarkerArray",
    "DetectedObjects": "autoware_perception_msgs/msg/DetectedObjects",
    "TrackedObjects": "autoware_perception_msgs/msg/TrackedObjects",
    "TrafficLightGroupArray": "autoware_perception_msgs/msg/TrafficLightGroupArray",
    "Trajectory": "autoware_planning_msgs/msg/Trajectory",
    "Control": "autoware_control_msgs/msg/Control",
}


def msg_class(short_name: str):
    return RclpyFactory.message_class(TYPES[short_name])
