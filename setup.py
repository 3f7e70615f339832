"""Installable package for tfmed (``pip install -e .``)."""
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
    package_data={"tfmed": ["datasets/*/*.npz", "datasets/*/*.md", "datasets/*/LICENSE"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "numpy",
        "pandas",
        "scikit-learn>=1.9",
        "scikit-image",
        "scipy",
        "skops>=0.16",
        "opencv-python-headless",
        "pydicom>=3",
        "pylibjpeg>=2",
        "pylibjpeg-openjpeg>=2",
        "pylibjpeg-libjpeg>=2",
        "nibabel>=5",
        "PyYAML",
        "matplotlib",
        "Pillow",
    ],
    entry_points={"console_scripts": ["tfmed=tfmed.run.cli:main"]},
)
