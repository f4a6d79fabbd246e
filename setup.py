"""ringmoe_jax: JAX/Flax implementation of RingMoE (multi-modal remote-sensing MoE foundation model)."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "array_record>=0.8.6",
    "tensorflow-datasets>=4.9.10",
    "ml-collections>=1.1.0",
    "clu>=0.0.12",
    "numpy>=2.0",
    "absl-py>=2.1",
    "tensorboardX>=2.6",
    "scipy>=1.11",          # Hungarian matching (tracking), metrics
    "pycocotools>=2.0.7",   # COCO mAP of detection
    "motmetrics>=1.4",      # MOTA / IDF1 of tracking
]

setup(
    name="ringmoe_jax",
    version="0.1.0",
    description="RingMoE in JAX/Flax NNX: hierarchical-MoE multi-modal remote-sensing foundation model",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["ringmoe_jax", "ringmoe_jax.*"]),
    # Built on first use (ringmoe_jax/moe/native.py), so it ships as source.
    package_data={"ringmoe_jax.moe": ["native/*.cc"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "spyndex>=0.6", "rasterio>=1.3", "scikit-learn>=1.3",
                 "shapely>=2.0",
                 # plots and the notebooks (tests/test_notebooks.py runs them with nbclient)
                 "matplotlib>=3.8", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],
        "geo": ["rasterio>=1.3"],
        "plots": ["matplotlib>=3.8"],
    },
    license="Apache-2.0",
)
