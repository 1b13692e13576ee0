"""Networks, model packages, the registry, export and quantisation."""

from overread.models.export import (
    CamClassifier,
    cam_parts,
    export_onnx,
    fold_batchnorm,
    quantize_int8,
)
from overread.models.manifest import Manifest, Task
from overread.models.networks import ARCHITECTURES, CxrConvNet, build_network
from overread.models.package import (
    ModelPackage,
    derive_package,
    load_package,
    resign_package,
    verify_package,
    write_ensemble_package,
    write_package,
)
from overread.models.registry import PackageEntry, Registry, bundled_dir, signing_key

__all__ = [
    "ARCHITECTURES",
    "CamClassifier",
    "CxrConvNet",
    "Manifest",
    "ModelPackage",
    "PackageEntry",
    "Registry",
    "Task",
    "build_network",
    "bundled_dir",
    "cam_parts",
    "derive_package",
    "export_onnx",
    "fold_batchnorm",
    "load_package",
    "quantize_int8",
    "resign_package",
    "signing_key",
    "verify_package",
    "write_ensemble_package",
    "write_package",
]
