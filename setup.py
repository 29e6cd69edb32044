"""Install with `pip install -e .`. Paddle is not a dependency here on purpose: install
`paddlepaddle` (CPU) or `paddlepaddle-gpu` yourself, so one never drags in the other."""
from setuptools import find_packages, setup

TOOLS = ["train", "eval", "export", "predict", "convert", "benchmark", "model_info",
         "visualize_attention", "selftest"]

setup(
    name="plsc",
    version="0.1.0",
    description="PaddlePaddle large-scale training suite for Vision Transformers",
    packages=find_packages(include=["plsc", "plsc.*"]),
    package_data={"plsc": ["resources/*"], "plsc.models": ["*.cc"]},
    python_requires=">=3.9",
    install_requires=[line.strip() for line in open("requirements.txt") if line.strip()],
    extras_require={"test": ["pytest>=7", "scipy>=1.9"]},
    entry_points={"console_scripts": [
        f"plsc-{t.replace('_', '-')}=plsc.cli.{t}:main" for t in TOOLS]},
)
