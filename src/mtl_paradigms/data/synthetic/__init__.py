"""Synthetic stand-ins for NYUv2 and Cityscapes, written in the MTAN on-disk format."""

from mtl_paradigms.data.synthetic.scenes import (
    Scene,
    SyntheticSettings,
    class_names,
    fine_to_coarse,
    generate_scene,
    metadata,
    render_scene,
    write_synthetic_mtan,
)

__all__ = [
    "Scene",
    "SyntheticSettings",
    "class_names",
    "fine_to_coarse",
    "generate_scene",
    "metadata",
    "render_scene",
    "write_synthetic_mtan",
]
