"""Networks, model packages, the registry, export and quantisation."""

from overread.models.networks import ARCHITECTURES, build_network

__all__ = ["ARCHITECTURES", "build_network"]
