"""The tracking node, running as its own process, against malformed, non-finite, oversized, repeated and
older detections: it survives, counts each kind on /diagnostics, logs each kind once, and keeps tracking."""

from __future__ import annotations

import numpy as np
import pytest

from adstack import ros_convert as rc
from test_nodes_harness import NodeProcess, Probe, boxes, domain_id_for, needs_autoware

pytestmark = needs_autoware

NODE = "tracker"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from autoware_perception_msgs.msg import DetectedObjects, TrackedObjects

    from adstack import topics

    domain = domain_id_for(__name__)
    node = NodeProcess(NODE, domain, tmp_path_factory.mktemp("tracker") / f"{NODE}.log", {"diagnostics_period_s": 0.2})
    probe = Probe(domain)
    try:
        pub = probe.publisher(DetectedObjects, topics.DETECTED_OBJECTS)
        outputs = probe.collect(TrackedObjects, topics.TRACKED_OBJECTS)
        assert probe.wait_matched(pub), node.log()
        assert probe.wait_diagnostics(NODE), node.log()
        yield node, probe, pub, outputs
    finally:
        node.stop()
        probe.close()


def _stamps(outputs) -> list[float]:
    return [round(rc.time_to_sec(m.header.stamp), 3) for m in outputs]


def _moving(stamp: float, n: int = 3):
    """n cars driving +x at 5 m/s, seen at ``stamp``."""
    b = boxes(n, stamp)
    b.center[:, 0] += 5.0 * stamp
    return b


def _send_and_wait(probe, pub, outputs, b) -> bool:
    pub.publish(rc.detected_objects_to_msg(b))
    return probe.spin_until(lambda: round(b.stamp, 3) in _stamps(outputs), 30.0)


def test_bad_detections_are_survived_counted_logged_once_and_tracking_goes_on(running):
    node, probe, pub, outputs = running
    for k in range(3):  # a few good frames: tracks confirmed, stamped with their detections
        assert _send_and_wait(probe, pub, outputs, _moving(1.0 + 0.1 * k)), node.log()

    nan = _moving(1.3)
    nan.center[1, 0] = np.nan
    nan.velocity[2, 1] = np.inf
    assert _send_and_wait(probe, pub, outputs, nan), node.log()  # the finite object still goes through
    wrong_frame = _moving(1.35)
    wrong_frame.frame_id = "base_link"
    too_many = boxes(5_000, 1.36)
    for msg in (rc.detected_objects_to_msg(wrong_frame), rc.detected_objects_to_msg(too_many)):
        pub.publish(msg)
        pub.publish(msg)
    for stamp in (1.3, 1.3, 1.25, 1.25):  # the same stamp again, then an older one
        pub.publish(rc.detected_objects_to_msg(_moving(stamp)))
    for k in range(4, 7):
        assert _send_and_wait(probe, pub, outputs, _moving(1.0 + 0.1 * k)), node.log()

    kinds = ["nonfinite_objects", "malformed_objects.wrong_frame", "malformed_objects.too_large", "duplicate_stamp",
             "out_of_order_stamp"]
    for kind in kinds:
        assert probe.wait_count(NODE, kind, 1, 10.0), (kind, probe.counts(NODE), node.log())
    assert probe.wait_count(NODE, "malformed_objects.wrong_frame", 2, 10.0)
    for kind in kinds:
        assert len(node.log_lines_with(f"]: {kind}: ")) == 1, (kind, node.log())
    assert node.alive()
    # Nothing bad got out: outputs only for the good stamps, in order, every value finite.
    good = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
    assert _stamps(outputs)[-len(good):] == good and len(outputs) == len(good), _stamps(outputs)
    last = rc.boxes_from_objects(outputs[-1])
    assert len(last) == 3 and np.isfinite(last.center).all() and np.isfinite(last.velocity).all()
    assert np.allclose(last.velocity[:, 0], 5.0, atol=1.0)  # the middle car's NaN frame did not poison it


def test_a_clock_jump_back_is_a_new_run(running):
    node, probe, pub, outputs = running
    assert _send_and_wait(probe, pub, outputs, _moving(50.0)), node.log()
    assert _send_and_wait(probe, pub, outputs, _moving(2.0)), node.log()  # 48 s back: a restarted replay
    assert probe.wait_count(NODE, "clock_jump_back", 1, 10.0), probe.counts(NODE)
    assert _send_and_wait(probe, pub, outputs, _moving(2.1)), node.log()
    assert node.alive()


def test_silent_detections_are_reported_and_tracking_resumes(running):
    node, probe, pub, outputs = running
    assert _send_and_wait(probe, pub, outputs, _moving(60.0)), node.log()
    before = probe.counts(NODE).get("stale_input.objects", 0)
    assert probe.wait_count(NODE, "stale_input.objects", before + 1, 10.0), probe.counts(NODE)
    assert _send_and_wait(probe, pub, outputs, _moving(60.1)), node.log()
    assert len(node.log_lines_with("]: stale_input.objects: ")) == 1 and node.alive()
