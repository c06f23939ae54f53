#!/usr/bin/env bash
# Build adstack's bundled Autoware interface packages (adstack/msgs/<package>/msg/*.msg) into a
# pip-only virtual environment, so rclpy can publish and subscribe them without a ROS install.
#
#   scripts/build_msgs.sh [VENV]        (default: $ADSTACK_VENV or .venv)
#
# Idempotent: a stamp (hash of the .msg files and this script) skips the build when nothing
# changed and the packages import. Needs cmake, make, a C/C++ compiler and the packages in
# adstack/msgs/build-requirements.txt. About 1 minute of CPU on 2 cores.
#
# Why the rewriting below: the ros-jazzy-* wheels were built in a manylinux container and their
# exported CMake targets name that container's Python and numpy include directories
# (/opt/python/cp311-cp311/...). Generating a package that depends on them fails until those
# paths point at this venv's Python headers and numpy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV_ARG=${1:-${ADSTACK_VENV:-$ROOT/.venv}}
[ -d "$VENV_ARG" ] || { echo "build_msgs: error: no virtual environment at $VENV_ARG" >&2; exit 1; }
VENV=$(cd "$VENV_ARG" && pwd)  # resolved from the caller's directory, before moving to the repo
cd "$ROOT"
PY=$VENV/bin/python
BUILD=${ADSTACK_MSGS_BUILD:-$ROOT/build/msgs}
PACKAGES=(autoware_perception_msgs autoware_planning_msgs autoware_control_msgs)
DEPENDENCIES="std_msgs geometry_msgs builtin_interfaces unique_identifier_msgs"
JOBS=${JOBS:-2}

log() { echo "build_msgs: $*"; }
die() { echo "build_msgs: error: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no Python at $PY (create the venv first: scripts/setup.sh)"
for tool in cmake make cc c++; do
  command -v "$tool" >/dev/null || die "'$tool' not found (Debian: apt-get install cmake make gcc g++)"
done
[ -f "$VENV/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake" ] \
  || die "rosidl generators missing in $VENV: $VENV/bin/python -m pip install -r adstack/msgs/build-requirements.txt"
"$PY" -c "import catkin_pkg" 2>/dev/null \
  || die "catkin_pkg missing in $VENV: $VENV/bin/python -m pip install -r adstack/msgs/build-requirements.txt"

stamp_input=$( (cat scripts/build_msgs.sh; for p in "${PACKAGES[@]}"; do cat adstack/msgs/$p/msg/*.msg; done) | sha256sum | cut -d' ' -f1)
STAMP=$VENV/share/adstack_msgs.stamp
import_check="import autoware_perception_msgs.msg, autoware_planning_msgs.msg, autoware_control_msgs.msg"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_input" ] \
   && env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$PY" -c "$import_check" 2>/dev/null; then
  log "up to date"
  exit 0
fi

# 1. Point the wheels' exported CMake files at this venv's Python and numpy headers (idempotent:
#    only the manylinux paths are rewritten).
"$PY" - "$VENV" <<'EOF'
import re, sys, sysconfig
from pathlib import Path
import numpy
venv = Path(sys.argv[1])
py_include = sysconfig.get_paths()["include"]
if not (Path(py_include) / "Python.h").is_file():
    sys.exit(f"build_msgs: error: Python.h not in {py_include} (Debian: apt-get install python3.11-dev)")
numpy_re = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")
python_re = re.compile(r"/opt/python/cp\d+-cp\d+/include/python3\.\d+")
changed = 0
for path in (venv / "share").glob("*/cmake/*.cmake"):
    text = path.read_text()
    if "/opt/python/" not in text:
        continue
    new = python_re.sub(py_include, numpy_re.sub(numpy.get_include(), text))
    if new != text:
        path.write_text(new)
        changed += 1
print(f"build_msgs: rewrote include paths in {changed} exported CMake file(s)")
EOF

# 2. One ament_cmake interface package per folder, configured and installed into the venv.
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# The wheels' .pth re-executes Python to set LD_LIBRARY_PATH; the generators need no ROS
# libraries, so skip that re-exec during the build (it runs Python hundreds of times).
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
for pkg in "${PACKAGES[@]}"; do
  src=$BUILD/$pkg/src
  rm -rf "$BUILD/$pkg"
  mkdir -p "$src/msg"
  cp adstack/msgs/$pkg/msg/*.msg "$src/msg/"
  msgs=$(cd "$src" && ls msg/*.msg | sed 's/.*/  "&"/')
  cat > "$src/package.xml" <<EOF
<?xml version="1.0"?>
<package format="3">
  <name>$pkg</name>
  <version>1.0.0</version>
  <description>Autoware's $pkg definitions, bundled with adstack (Apache-2.0, see adstack/msgs/README.md)</description>
  <maintainer email="dev@adstack.invalid">adstack developers</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
$(for d in $DEPENDENCIES; do echo "  <depend>$d</depend>"; done)
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
EOF
  cat > "$src/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.14)
project($pkg)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
$(for d in $DEPENDENCIES; do echo "find_package($d REQUIRED)"; done)
rosidl_generate_interfaces(\${PROJECT_NAME}
$msgs
  DEPENDENCIES $DEPENDENCIES)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
EOF
  log "building $pkg"
  if ! (cmake -S "$src" -B "$BUILD/$pkg/build" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_BUILD_TYPE=Release \
          -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$PY" -DPYTHON_EXECUTABLE="$PY" \
        && make -C "$BUILD/$pkg/build" -j"$JOBS" install) > "$BUILD/$pkg/build.log" 2>&1; then
    tail -30 "$BUILD/$pkg/build.log" >&2
    die "building $pkg failed; full log: $BUILD/$pkg/build.log"
  fi
done

# 3. Check that rclpy can use them (import, construct, serialize), with the normal bootstrap.
env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$PY" -c "
$import_check
from rclpy.serialization import serialize_message
from autoware_perception_msgs.msg import DetectedObjects
from autoware_control_msgs.msg import Control
serialize_message(DetectedObjects()); serialize_message(Control())
" || die "the packages were installed but do not import in $PY"
echo "$stamp_input" > "$STAMP"
log "installed ${PACKAGES[*]} into $VENV"
