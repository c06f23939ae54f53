"""A small kinematic bicycle for closed-loop tests of the controller and the expert.

Pose at ``pose_offset_m`` ahead of the rear axle (0: the rear axle, like sim/vehicle.py; wheelbase/2:
the centre, like a CARLA actor), first-order actuator lag on steering and acceleration, no reversing. Deliberately independent of the controller's code, so the
tests check the controller against a plant it does not share assumptions with.
"""

from __future__ import annotations

import math

from adstack.types import Command, EgoState


class KinematicBicycle:
    def __init__(self, x=0.0, y=0.0, yaw=0.0, v=0.0, wheelbase_m=2.7, steer_lag_s=0.1, accel_lag_s=0.2,
                 pose_offset_m=0.0):
        self.pose_offset_m = pose_offset_m
        self.x, self.y, self.yaw, self.v = x, y, yaw, v
        self.steer = 0.0
        self.accel = 0.0
        self.wheelbase_m = wheelbase_m
        self.steer_lag_s = steer_lag_s
        self.accel_lag_s = accel_lag_s
        self.t = 0.0

    def state(self) -> EgoState:
        return EgoState(x=self.x, y=self.y, yaw=self.yaw, v=self.v, accel=self.accel, steer=self.steer,
                        yaw_rate=self.v * math.tan(self.steer) / self.wheelbase_m, stamp=self.t)

    def tick(self, cmd: Command, dt: float) -> None:
        self.steer += (cmd.steer - self.steer) * min(dt / self.steer_lag_s, 1.0)
        self.accel += (cmd.accel - self.accel) * min(dt / self.accel_lag_s, 1.0)
        lr = self.pose_offset_m
        beta = math.atan(lr / self.wheelbase_m * math.tan(self.steer))
        self.x += self.v * math.cos(self.yaw + beta) * dt
        self.y += self.v * math.sin(self.yaw + beta) * dt
        self.yaw += self.v * math.cos(beta) * math.tan(self.steer) / self.wheelbase_m * dt
        self.v = max(self.v + self.accel * dt, 0.0)
        self.t += dt
