"""Tracker: ids persist, velocities converge, classes never mix, lost tracks expire."""

import numpy as np

from adstack.types import Boxes
from fusion.tracker import MultiObjectTracker, TrackerConfig


def boxes(xy, labels):
    xy = np.asarray(xy, float).reshape(-1, 2)
    n = len(xy)
    return Boxes(np.column_stack([xy, np.zeros(n)]), np.tile([4.5, 1.9, 1.5], (n, 1)), np.zeros(n), labels)


def test_constant_velocity_targets_keep_ids_and_get_velocities():
    trk = MultiObjectTracker()
    rng = np.random.default_rng(0)
    ids_seen = None
    for k in range(40):
        t = 0.1 * k
        truth = np.array([[10 + 8 * t, 0.0], [0.0, 20 - 1.2 * t]])
        det = boxes(truth + rng.normal(0, 0.1, truth.shape), [1, 2])
        out = trk.step(det, t)
    assert len(out) == 2
    order = np.argsort(out.label)
    v = out.velocity[order]
    assert np.allclose(v[0], [8, 0], atol=0.5)
    assert np.allclose(v[1], [0, -1.2], atol=0.3)
    assert len(set(out.ids.tolist())) == 2 and out.ids.max() <= 2  # no id churn


def test_classes_never_associate_and_tracks_expire():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1, max_missed_s=0.3))
    trk.step(boxes([[0, 0]], [1]), 0.0)
    out = trk.step(boxes([[0.2, 0]], [2]), 0.1)  # same place, other class: a new track
    assert sorted(out.label.tolist()) == [1, 2]
    for k in range(2, 7):
        out = trk.step(boxes([[0.2, 0]], [2]), 0.1 * k)
    assert out.label.tolist() == [2]  # the vehicle track expired


def test_unconfirmed_tracks_are_not_reported_and_empty_input_is_fine():
    trk = MultiObjectTracker(TrackerConfig(min_hits=3))
    assert len(trk.step(boxes(np.zeros((0, 2)), []), 0.0)) == 0
    assert len(trk.step(boxes([[5, 5]], [1]), 0.1)) == 0
    assert len(trk.step(boxes([[5, 5]], [1]), 0.2)) == 0
    assert len(trk.step(boxes([[5, 5]], [1]), 0.3)) == 1
