"""The PyTorch reference of kpair's pair model, for `bench_training.py`.

The same architecture as `kpair.models.backbone.ResNet18Backbone` with stock batch
norm and `kpair.models.pair_model.PairModel`: ResNet-18 basic blocks with
projection shortcuts (1x1 convolution and norm) where the shape changes,
convolutions without bias, the small or ImageNet stem, global average
pooling and a linear embedding; one backbone called on the left and on the
right images; a float32 linear head on the two concatenated embeddings. The
loss is `kpair.models.losses.PairLoss` with the default losses (L2 on A-A, hinge on
B-B and A-B), each pair type's mean summed.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels):
    # Keras BatchNormalization's defaults (its momentum 0.99 is torch's 0.01).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class BasicBlock(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.norm1 = _norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.norm2 = _norm(width)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != width:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, width, 1, stride, bias=False), _norm(width)
            )

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class Backbone(nn.Module):
    def __init__(self, widths, blocks_per_stage, stem, embedding_dim):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), _norm(widths[0]),
                nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), _norm(widths[0]),
                nn.ReLU(),
            )
        blocks, cin = [], widths[0]
        for stage, (count, width) in enumerate(zip(blocks_per_stage, widths)):
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.embedding = nn.Linear(cin, embedding_dim)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.embedding(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PairNet(nn.Module):
    """`PairNet(widths, blocks_per_stage, stem, embedding_dim)(left, right)`."""

    def __init__(self, widths, blocks_per_stage, stem, embedding_dim):
        super().__init__()
        self.backbone = Backbone(widths, blocks_per_stage, stem, embedding_dim)
        self.head = nn.Linear(2 * embedding_dim, 1)

    def forward(self, left, right):
        joint = torch.cat([self.backbone(left), self.backbone(right)], dim=1)
        # The head in float32, as kpair's, also under autocast.
        with torch.autocast(joint.device.type, enabled=False):
            return self.head(joint.float())


def pair_loss(pred, y):
    """`kpair.models.losses.PairLoss(("l2", "hinge", "hinge"))`;
    `y` = (target, type)."""
    pred, target, kind = pred.float().reshape(-1), y[:, 0], y[:, 1].long()
    one_hot = F.one_hot(kind, 3).float()
    hinge = F.relu(1.0 - target * pred)
    per_type = torch.stack([(pred - target) ** 2, hinge, hinge], dim=1)
    values = (per_type * one_hot).sum(dim=1)
    scale = len(pred) / torch.clamp(one_hot @ one_hot.sum(dim=0), min=1.0)
    return (values * scale).mean()
