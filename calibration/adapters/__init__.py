"""Ways to get detections from a detector: torchvision models, and detectron2.

torchvision models run here and keep full class-probability vectors
(:mod:`calibration.adapters.torchvision_models`); detectron2 models come in through their
``coco_instances_results.json`` export, or :mod:`calibration.adapters.detectron2` where
detectron2 is installed.
"""

from calibration.adapters.torchvision_models import (
    MODELS,
    Candidates,
    ImageCandidates,
    ImageRecord,
    TorchvisionDetector,
    build_model,
    images_from_coco,
    images_from_folder,
    load_detector,
    postprocess,
    read_checkpoint,
    read_image,
)

__all__ = [
    "MODELS",
    "Candidates",
    "ImageCandidates",
    "ImageRecord",
    "TorchvisionDetector",
    "build_model",
    "images_from_coco",
    "images_from_folder",
    "load_detector",
    "postprocess",
    "read_checkpoint",
    "read_image",
]
