"""oomguard: makes the Linux OOM killer visible and steerable on Kubernetes nodes."""

__version__ = "0.1.0"
