"""The sample detector's architecture: a small, real torchvision Faster R-CNN.

The audit needs a detector that trains on CPU in minutes yet has exactly the structure of the
detectors people audit (RPN, RoI heads, ``roi_heads.box_predictor``), so that the adapter's
probability extraction and last-layer fine-tuning run on it unchanged. A ResNet-50 is far too
slow to train here, so the backbone is a four-stage conv net with a feature pyramid at strides
4, 8 and 16: vehicles in the sample set are only 8-15 pixels long.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

SAMPLE_IMAGE_SIZE = 256


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    """Stride-2 conv then ``blocks - 1`` plain 3x3 convs, each Conv-BN-ReLU."""
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [
            nn.Conv2d(
                cin if i == 0 else cout, cout, 3, stride=2 if i == 0 else 1, padding=1, bias=False
            ),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def sample_backbone(out_channels: int = 32) -> BackboneWithFPN:
    """Conv stages at strides 2, 4, 8, 16 with an FPN on the last three."""
    body = nn.Sequential(
        OrderedDict(
            [
                ("stem", _stage(3, 24, 1)),
                ("s4", _stage(24, 32, 2)),
                ("s8", _stage(32, 64, 2)),
                ("s16", _stage(64, 128, 2)),
            ]
        )
    )
    return BackboneWithFPN(
        body,
        return_layers={"s4": "0", "s8": "1", "s16": "2"},
        in_channels_list=[32, 64, 128],
        out_channels=out_channels,
    )


def sample_fasterrcnn(num_classes: int = 5, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN for the synthetic set: ``num_classes`` counts the background (index 0).

    Keyword arguments go to :class:`torchvision.models.detection.FasterRCNN` (thresholds,
    proposal counts), as for torchvision's own builders.
    """
    backbone = sample_backbone()
    # one anchor size per pyramid level ('0','1','2' and the FPN's extra 'pool' level)
    anchors = AnchorGenerator(
        sizes=((12,), (24,), (48,), (96,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4
    )
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    defaults = dict(
        min_size=SAMPLE_IMAGE_SIZE,
        max_size=SAMPLE_IMAGE_SIZE,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
        representation_size=256,
    )
    defaults.update(kwargs)
    representation = defaults.pop("representation_size")
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, representation)
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **defaults,
    )
