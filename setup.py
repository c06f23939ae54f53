"""ament_python package ``adstack``: installs the stage packages, the launch files and ``adstack``."""

from glob import glob

from setuptools import find_packages, setup

PACKAGES = ["adstack", "perception", "fusion", "planning", "control", "hdmap", "sim"]

setup(
    name="adstack",
    version="0.1.0",
    packages=find_packages(include=PACKAGES + [f"{p}.*" for p in PACKAGES]),
    package_data={p: ["config/*.yaml", "*.md", "models/**/*"] for p in PACKAGES},
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
    entry_points={"console_scripts": ["adstack = adstack.cli:main"]},
)
