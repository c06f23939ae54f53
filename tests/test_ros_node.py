"""Node helpers: parameters from a dataclass + param.yaml, diagnostics, timers, staleness."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

rclpy = pytest.importorskip("rclpy")

from adstack.errors import DataError  # noqa: E402
from adstack.node import (Diagnostics, ProblemCounter, StageTimer, StalenessWatchdog,  # noqa: E402
                          declare_params, now_s, param_file, reliable_qos, sensor_qos)


@dataclass
class Gains:
    kp: float = 1.0
    ki: float = 0.0


@dataclass
class StageParams:
    rate_hz: float = 10.0
    mode: str = "fast"
    max_objects: int = 100
    enabled: bool = True
    thresholds: tuple[float, ...] = (0.3, 0.5)
    gains: Gains = field(default_factory=Gains)


@pytest.fixture
def context(monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    ctx.try_shutdown()


def _node(context, name="stage", overrides=()):
    from rclpy.parameter import Parameter

    return rclpy.create_node(f"{name}_{os.getpid()}", context=context,
                             parameter_overrides=[Parameter(k, value=v) for k, v in overrides])


def test_params_from_yaml_then_overrides(context, tmp_path):
    yaml_path = tmp_path / "stage.param.yaml"
    yaml_path.write_text("/**:\n  ros__parameters:\n    rate_hz: 20\n    thresholds: [0.1, 0.2, 0.9]\n"
                         "    gains: {kp: 2.5}\n")
    node = _node(context, overrides=[("mode", "accurate"), ("gains.ki", 0.25)])
    params = declare_params(node, StageParams, yaml_path)
    assert params == StageParams(rate_hz=20.0, mode="accurate", thresholds=(0.1, 0.2, 0.9),
                                 gains=Gains(kp=2.5, ki=0.25))
    assert node.get_parameter("gains.kp").value == 2.5
    # fixed at start-up by default
    from rclpy.parameter import Parameter

    result = node.set_parameters([Parameter("rate_hz", value=5.0)])[0]
    assert not result.successful and "start-up" in result.reason
    assert params.rate_hz == 20.0


@dataclass
class OtherParams:
    topic: str = "/points"


def test_two_param_sets_and_other_parameters_coexist(context):
    from rclpy.parameter import Parameter

    node = _node(context, "two")
    a = declare_params(node, StageParams)
    b = declare_params(node, OtherParams)  # declaring runs a's callback: it must not object
    node.declare_parameter("extra", 1)
    assert (a.rate_hz, b.topic) == (10.0, "/points")
    assert node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful
    assert not node.set_parameters([Parameter("topic", value="/x")])[0].successful


def test_dynamic_params_validate_and_apply(context):
    from rclpy.parameter import Parameter

    node = _node(context, "dyn")
    params = declare_params(node, StageParams, dynamic=True)
    assert node.set_parameters([Parameter("gains.kp", value=4.0)])[0].successful
    assert params.gains.kp == 4.0
    bad = node.set_parameters([Parameter("max_objects", value="many")])[0]
    assert not bad.successful
    assert params.max_objects == 100


def test_wrong_type_on_the_command_line_is_a_clear_error(context):
    node = _node(context, "bad", overrides=[("max_objects", 2.5)])
    with pytest.raises(DataError, match="max_objects"):
        declare_params(node, StageParams)


def test_param_file_location():
    assert param_file("fusion", "tracker").parts[-3:] == ("fusion", "config", "tracker.param.yaml")


def test_diagnostics_count_and_level(context):
    from adstack import ros_convert as rc

    node = _node(context, "diag")
    diag = Diagnostics(node, "lidar", period_s=0)
    diag.problem("nonfinite_points", "3 NaN points dropped")
    diag.problem("nonfinite_points", "5 NaN points dropped")
    diag.problem("stale_input", "no cloud for 0.5 s", level=2)
    diag.set_value("points", 120000)
    status = diag.status_msg()
    assert rc.diagnostic_level(status) == rc.DIAG_ERROR
    assert status.message == "stale_input: no cloud for 0.5 s"
    values = {kv.key: kv.value for kv in status.values}
    assert values == {"points": "120000", "count.nonfinite_points": "2", "count.stale_input": "1"}
    diag.publish()  # resets the level; counts stay
    assert rc.diagnostic_level(diag.status_msg()) == rc.DIAG_OK
    assert diag.problems.counts == {"nonfinite_points": 2, "stale_input": 1}


def test_stage_timer_publishes(context):
    from std_msgs.msg import Float64

    node = _node(context, "timed")
    got = []
    node.create_subscription(Float64, f"/timed_{os.getpid()}/debug/pipeline_latency_ms",
                             lambda m: got.append(m.data), 10)
    timer = StageTimer(node)
    stamp = now_s(node) - 0.25
    with timer.measure(stamp):
        sum(range(1000))
    assert timer.last_processing_ms >= 0
    assert timer.last_latency_ms >= 250.0
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    for _ in range(50):
        if got:
            break
        executor.spin_once(timeout_sec=0.05)
    assert got and got[0] == pytest.approx(timer.last_latency_ms)


def test_problem_counter_first_of_kind():
    counter = ProblemCounter()
    assert counter.add("a") and not counter.add("a") and counter.add("b")
    assert counter.total == 3


def test_staleness_watchdog():
    watchdog = StalenessWatchdog({"cloud": 0.3, "odom": 0.1}, start=10.0)
    assert watchdog.stale(10.05) == []
    assert watchdog.stale(10.2) == ["odom"]  # never arrived
    watchdog.feed("odom", 10.2)
    watchdog.feed("cloud", 10.2)
    assert watchdog.stale(10.25) == []
    assert watchdog.stale(10.45) == ["odom"]
    assert watchdog.stale(10.6) == ["cloud", "odom"]
    with pytest.raises(KeyError):
        watchdog.feed("camera", 1.0)


def test_qos_profiles():
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    assert sensor_qos().reliability == ReliabilityPolicy.BEST_EFFORT
    assert reliable_qos().reliability == ReliabilityPolicy.RELIABLE
    assert reliable_qos().durability == DurabilityPolicy.VOLATILE
