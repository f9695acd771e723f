"""ResNet image encoder (He et al. 2016) with basic blocks, trained from scratch.

With ``stem="imagenet"`` and the default arguments the parameters mirror torchvision's ``resnet18`` (minus
``fc``) key for key after renaming ``stem.0/1`` -> ``conv1/bn1`` and ``stages.i`` -> ``layer{i+1}``.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual; a 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # No conv bias: the BatchNorm that follows has its own shift, so a bias would be redundant.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Start each residual branch at zero so the block begins as the identity (Goyal et al. 2017):
        # the deep net trains like a shallow one at first, which speeds up early training from scratch.
        nn.init.zeros_(self.bn2.weight)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNetImageEncoder(nn.Module):
    """``image (B, C, H, W) -> EncoderOutput(tokens (B, h*w, C_out), pooled (B, C_out), mask None)``.

    Stage ``i`` has ``width * 2**i`` channels and halves the resolution (except stage 0), so the attribute
    ``self.width`` (the pooled dim) is ``width * 2**(len(layers) - 1)`` -- 512 for the defaults -- while the
    argument ``width`` is the channel count of the first stage.

    Args:
        layers: basic blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
        width: channels of the first stage.
        in_channels: image channels.
        stem: ``"imagenet"`` = 7x7/2 conv + 3x3/2 max-pool (4x downsampling, for ~224 px images);
            ``"cifar"`` = one 3x3/1 conv, no pool, so small images (32-64 px) keep enough resolution.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        in_channels: int = 3,
        stem: Literal["cifar", "imagenet"] = "cifar",
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        stages = []
        channels = width
        for i, depth in enumerate(layers):
            out_channels = width * 2**i
            blocks = [BasicBlock(channels, out_channels, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(out_channels, out_channels) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.width = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init for ReLU nets (torchvision's choice); PyTorch's default is tuned for linear layers.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        x = self.stages(self.stem(image))  # (B, C, h, w)
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(dim=1), mask=None)
