"""nuScenes-style detection metrics against cases computed by hand."""

import math

import numpy as np
import pytest

from adstack.types import Boxes, ObjectClass
from perception.metrics import (DetectionEvalConfig, accumulate, average_precision, evaluate, format_table,
                                scale_iou, tp_error, yaw_difference)

V = int(ObjectClass.VEHICLE)
CFG = DetectionEvalConfig(class_names=("VEHICLE",))


def boxes(centers, sizes=None, yaws=None, scores=None, label=V):
    n = len(centers)
    centers = np.array([[c[0], c[1], 0.0] for c in centers]).reshape(n, 3)
    sizes = np.array(sizes if sizes is not None else [[4.0, 2.0, 1.5]] * n).reshape(n, 3)
    return Boxes(centers, sizes, yaws if yaws is not None else np.zeros(n), np.full(n, label), scores)


# Three ground-truth cars; three predictions: A 0.3 m from GT 1 (score 0.9), B 3 m from GT 3
# (score 0.8), C 1.5 m from GT 2 (score 0.7), C half as long and turned around.
GT = boxes([(10, 0), (20, 0), (30, 0)])
PRED = boxes([(10.3, 0), (33, 0), (20, 1.5)], sizes=[[4, 2, 1.5], [4, 2, 1.5], [2, 2, 1.5]],
             yaws=[0.1, 0.0, math.pi], scores=[0.9, 0.8, 0.7])


def test_helpers_by_hand():
    assert scale_iou(np.array([4.0, 2, 1.5]), np.array([2.0, 2, 1.5])) == pytest.approx(0.5)
    assert scale_iou(np.array([1.0, 1, 1]), np.array([2.0, 2, 2])) == pytest.approx(1 / 8)
    assert yaw_difference(0.1, 2 * math.pi - 0.1) == pytest.approx(0.2)
    assert yaw_difference(0.0, math.pi) == pytest.approx(math.pi)
    assert yaw_difference(0.0, math.pi, period=math.pi) == pytest.approx(0.0, abs=1e-12)
    assert yaw_difference(-3.0, 3.0) == pytest.approx(2 * math.pi - 6.0)


def test_ap_at_two_metres_by_hand():
    # Score order A (TP), B (FP: 3 m), C (TP): precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3.
    # Interpolated at r = 0.11 .. 1.00 (the devkit drops r <= min_recall): 1 for r < 1/3 (23 points),
    # 1/2 + (r - 1/3)/2 on (1/3, 2/3] (33 points), 0 above 2/3. Minus min_precision 0.1, clipped,
    # averaged over 90 points, divided by 0.9. The sum of (r - 1/3) over r = .34 .. .66 is 5.5.
    curve = accumulate([GT], [PRED], V, 2.0, CFG)
    assert curve.n_tp == 2 and curve.n_gt == 3
    expected = (23 * 0.9 + 33 * 0.4 + 5.5 / 2) / 90 / 0.9
    assert average_precision(curve, 0.1, 0.1) == pytest.approx(expected)


def test_ap_at_other_thresholds_by_hand():
    # 0.5 m and 1 m: only A matches: precision 1 up to recall 1/3 then nothing -> 23 points of 0.9.
    for th in (0.5, 1.0):
        assert average_precision(accumulate([GT], [PRED], V, th, CFG), 0.1, 0.1) == pytest.approx(23 / 90)
    # 4 m: all three match (B to GT 3 at 3 m): precision 1 at every recall -> AP 1.
    assert average_precision(accumulate([GT], [PRED], V, 4.0, CFG), 0.1, 0.1) == pytest.approx(1.0)


def test_tp_errors_by_hand():
    # Matches at 2 m in score order: A (0.3 m, IoU 1, yaw 0.1) then C (1.5 m, IoU 0.5, yaw pi).
    # Running means: ATE 0.3, 0.9; ASE 0, 0.25; AOE 0.1, (0.1 + pi)/2. Recall points 0.11..0.33
    # have confidence 0.9 (first match's values); points r in 0.34..0.66 have confidence
    # 0.8 - 0.3 (r - 1/3), between the matches' 0.9 and 0.7, so each error is linear in r there:
    # e(r) = e1 + (e2 - e1) (0.1 + 0.3 (r - 1/3)) / 0.2. Highest recall reached: index 66.
    curve = accumulate([GT], [PRED], V, 2.0, CFG)
    assert curve.max_recall_index == 66

    def expected(e1, e2):
        upper = sum(e1 + (e2 - e1) * (0.1 + 0.3 * (r / 100 - 1 / 3)) / 0.2 for r in range(34, 67))
        return (23 * e1 + upper) / 56

    assert tp_error(curve, 0.1, "trans_err") == pytest.approx(expected(0.3, 0.9))
    assert tp_error(curve, 0.1, "trans_err") == pytest.approx((23 * 0.3 + 33 * 0.6 + 0.9 * 5.5) / 56)
    assert tp_error(curve, 0.1, "scale_err") == pytest.approx(expected(0.0, 0.25))
    assert tp_error(curve, 0.1, "orient_err") == pytest.approx(expected(0.1, (0.1 + math.pi) / 2))


def test_perfect_detections_score_one():
    frames = [GT, boxes([(5, 5), (-8, 3)])]
    result = evaluate(frames, frames, CFG)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["mATE"] == pytest.approx(0.0) and result["mASE"] == pytest.approx(0.0)
    assert result["mAOE"] == pytest.approx(0.0)
    assert result["NDS_like"] == pytest.approx(1.0)


def test_no_predictions_and_missing_classes():
    result = evaluate([GT], [Boxes()], DetectionEvalConfig())
    vehicle = result["classes"]["VEHICLE"]
    assert vehicle["mean_ap"] == 0.0 and vehicle["ATE"] == 1.0 and vehicle["AOE"] == 1.0
    # No pedestrians labelled: the class is reported as None and left out of the means.
    assert result["classes"]["PEDESTRIAN"]["mean_ap"] is None
    assert result["mAP"] == 0.0 and result["NDS_like"] == pytest.approx(0.0)
    assert "vehicle" in format_table(result)


def test_matching_is_per_frame_and_per_class():
    # The right box in the wrong frame or with the wrong class is a false positive.
    wrong_frame = evaluate([GT, Boxes()], [Boxes(), GT], CFG)
    assert wrong_frame["mAP"] == 0.0
    wrong_class = evaluate([GT], [boxes([(10, 0), (20, 0), (30, 0)], label=int(ObjectClass.PEDESTRIAN))], CFG)
    assert wrong_class["mAP"] == 0.0


def test_one_prediction_matches_one_ground_truth():
    # Two predictions on one car: the better-scored one matches, the other is a false positive.
    gt = boxes([(10, 0)])
    pred = boxes([(10, 0.2), (10, 0.1)], scores=[0.9, 0.5])
    curve = accumulate([gt], [pred], V, 2.0, CFG)
    assert curve.n_tp == 1
    assert tp_error(curve, 0.1, "trans_err") == pytest.approx(0.2)


def test_range_filter_drops_far_boxes():
    far = boxes([(60, 0)])   # beyond the 50 m vehicle range: neither counted nor penalised
    result = evaluate([Boxes.concat([GT, far])], [Boxes.concat([GT, far])], CFG)
    assert result["classes"]["VEHICLE"]["n_gt"] == 3
    assert result["mAP"] == pytest.approx(1.0)


def test_config_is_checked():
    with pytest.raises(ValueError):
        DetectionEvalConfig(tp_threshold_m=3.0)
    with pytest.raises(KeyError):
        DetectionEvalConfig(class_names=("TRUCK",))


def test_recall_below_min_recall_scores_zero_and_errors_one():
    # One hit among 20 cars: recall 0.05 never reaches min_recall 0.1, so AP 0 and every error 1,
    # even though the one match is perfect.
    gt = boxes([(2.0 * k, 0) for k in range(1, 21)])   # 2 .. 40 m, inside the 50 m vehicle range
    pred = boxes([(2.0, 0)])
    curve = accumulate([gt], [pred], V, 2.0, CFG)
    assert curve.n_tp == 1 and curve.max_recall_index == 5
    assert average_precision(curve, 0.1, 0.1) == 0.0
    assert tp_error(curve, 0.1, "trans_err") == 1.0


def test_ties_follow_the_devkit_order():
    # Equal scores: the devkit's sort visits the later prediction first, so it takes the car.
    gt = boxes([(10, 0)])
    pred = boxes([(10, 0.5), (10, 0.1)], scores=[0.5, 0.5])
    curve = accumulate([gt], [pred], V, 2.0, CFG)
    assert tp_error(curve, 0.1, "trans_err") == pytest.approx(0.1)
