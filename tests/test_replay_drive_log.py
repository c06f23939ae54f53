"""A real `adstack drive` log (Town01, embedded world with lidar): it opens with mcap-ros2-support
(what Foxglove-side tools use) and decodes to the cloud and objects, and it replays through the stack
with metrics against its ground truth."""

from pathlib import Path

import numpy as np
import pytest

from adstack import topics
from adstack.paths import shared_data_dir
from adstack.ros_convert import boxes_from_objects, decode_pointcloud2

ROUTES = shared_data_dir() / "routes" / "leaderboard1_routes_training.xml"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ROUTES.is_file(), reason="shared Leaderboard routes not present")]


@pytest.fixture(scope="module")
def drive_log(tmp_path_factory) -> Path:
    from sim.drive import DriveOptions, drive
    out = tmp_path_factory.mktemp("drive")
    drive(DriveOptions(routes=str(ROUTES), route_id="0", out=str(out), seconds=3.0, vehicles=100, pedestrians=60, bev=False, progress=False))
    log = out / "log.mcap"
    assert log.exists()
    return log


def _mcap_file(log: Path) -> Path:
    """The MCAP file itself, whether drive wrote one file or a rosbag2 directory."""
    return log if log.is_file() else next(log.glob("*.mcap"))


def test_drive_log_decodes_with_mcap_ros2_support(drive_log):
    from mcap_ros2.reader import read_ros2_messages
    clouds, objects, schemas = [], [], {}
    for m in read_ros2_messages(str(_mcap_file(drive_log)), topics=[topics.LIDAR_POINTS, topics.GROUND_TRUTH_OBJECTS]):
        schemas[m.channel.topic] = m.schema.name
        if m.channel.topic == topics.LIDAR_POINTS:
            clouds.append(decode_pointcloud2(m.ros_msg)[0])
        else:
            objects.append(boxes_from_objects(m.ros_msg))
    assert schemas == {topics.LIDAR_POINTS: "sensor_msgs/msg/PointCloud2",
                       topics.GROUND_TRUTH_OBJECTS: "autoware_perception_msgs/msg/TrackedObjects"}
    assert len(clouds) == 3 and all(len(c) > 10_000 and c.frame_id == "lidar" for c in clouds)
    assert np.isfinite(clouds[0].points).all() and clouds[0].actor_ids is not None
    assert len(objects) == 6 and sum(len(o) for o in objects) > 0 and all((o.ids >= 0).all() for o in objects)


def test_drive_log_replays_with_metrics(drive_log, tmp_path):
    from sim.replay import ReplayOptions, replay
    report = replay(ReplayOptions(bag=str(drive_log), out=str(tmp_path), model="classical", progress=False))
    assert report["frames"]["processed"] == 3 and not report["frames"]["dropped"]
    assert report["metrics"]["frames"] == 2   # clouds at 1.1 s and 2.1 s lie between ground-truth messages
    # 100 vehicles in Town01: some are within lidar range (no car is inserted within 30 m of the ego)
    assert report["metrics"]["detection"]["classes"]["VEHICLE"]["n_gt"] > 0
    assert (tmp_path / "replay.mcap").is_file()
