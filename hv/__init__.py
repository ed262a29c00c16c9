"""hv: Docker's verbs, every container a small QEMU/KVM virtual machine."""

__version__ = "0.1.0"
