"""Small graph models (residual, concatenating, depthwise, gated, ...) for the twin's tests.

Each factory seeds torch, builds the model in eval mode with random BatchNorm statistics and
returns ``(model, input_shape)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                size = module.running_mean.shape
                module.running_mean.copy_(torch.randn(size, generator=generator))
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.randn(size, generator=generator))
                    module.bias.copy_(torch.randn(size, generator=generator))
    return model


def _ready(model: nn.Module, seed: int = 0) -> nn.Module:
    return randomize_batchnorm(model, seed).eval()


class ResidualBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs with BN, F.relu, a strided 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not batchnorm)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not batchnorm)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not batchnorm), norm(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


def resnet_block(batchnorm: bool = True):
    """Stem conv, a residual block with a stride-2 projection, global pooling, dense head."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        ResidualBlock(4, 6, 2, batchnorm),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )
    return _ready(model), (3, 8, 8)


class DenseBlock(nn.Module):
    """DenseNet's block: every layer (BN, ReLU, 3x3 conv) sees the concatenation of all before."""

    def __init__(self, cin: int, growth: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(cin + i * growth),
                nn.ReLU(),
                nn.Conv2d(cin + i * growth, growth, 3, padding=1, bias=False),
            )
            for i in range(layers)
        )

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def densenet_block():
    """Stem conv, a dense block of three layers, a transition (1x1 conv, avg pool), head."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        DenseBlock(4, 3, 3),
        nn.BatchNorm2d(13),
        nn.ReLU(),
        nn.Conv2d(13, 6, 1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )
    return _ready(model), (3, 8, 8)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, depthwise 3x3, ReLU6, linear 1x1 bottleneck, and a
    residual add when the shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, batchnorm: bool = True):
        super().__init__()
        hidden = cin * expand
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=not batchnorm),
            norm(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=not batchnorm),
            norm(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=not batchnorm),
            norm(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        if self.residual:
            return x + self.block(x)
        return self.block(x)


def mobilenet_block(batchnorm: bool = True):
    """Stem, inverted residuals with depthwise stride 1 (residual) and stride 2, head."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=not batchnorm),
        norm,
        nn.ReLU6(),
        InvertedResidual(4, 4, 1, 2, batchnorm),
        InvertedResidual(4, 6, 2, 3, batchnorm),
        InvertedResidual(6, 6, 1, 2, batchnorm),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )
    return _ready(model), (3, 8, 8)


class SqueezeExcitation(nn.Module):
    """A squeeze-and-excitation gate: global pooling, two 1x1 convs, sigmoid, product."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * scale


class GatedNet(nn.Module):
    """Conv and SiLU, a squeeze-and-excitation gate, ``x.mean((2, 3))``, dense head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.SiLU()
        self.se = SqueezeExcitation(6, 2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.se(self.act(self.conv(x))).mean((2, 3)))


def gated_net():
    torch.manual_seed(0)
    return _ready(GatedNet()), (3, 8, 8)


def grouped_net():
    """Grouped convolutions (groups 2 and 3, neither depthwise), with BatchNorm."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, groups=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 1, groups=3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )
    return _ready(model), (4, 6, 6)


def transpose_net():
    """Transposed convolutions with and without padding and output padding."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(3, 2, 4, stride=2, bias=False),
        nn.Flatten(),
        nn.Linear(2 * 18 * 18, 3),
    )
    return _ready(model), (2, 6, 6)


class UpsampleNet(nn.Module):
    """A small U-Net step: pool, conv, nearest upsampling (module and functional), concat skip."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.inner = nn.Conv2d(3, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.out = nn.Conv2d(6, 2, 1)
        self.fc = nn.Linear(2 * 8 * 24, 3)

    def forward(self, x):
        skip = F.relu(self.down(x))
        deep = self.up(F.relu(self.inner(self.pool(skip))))
        merged = self.out(torch.cat([skip, deep], dim=1))
        wide = F.interpolate(merged, scale_factor=(1, 3), mode="nearest")
        return self.fc(torch.flatten(wide, 1))


def upsample_net():
    torch.manual_seed(0)
    return _ready(UpsampleNet()), (2, 8, 8)


class ShuffleNet(nn.Module):
    """A channel shuffle (``view``, ``transpose``, ``contiguous``, ``view``) between convs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, groups=2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        x = self.conv1(x)
        x = x.view(x.size(0), 2, 3, 5, 5).transpose(1, 2).contiguous().view(x.size(0), 6, 5, 5)
        return self.fc(self.conv2(x).flatten(1))


def shuffle_net():
    torch.manual_seed(0)
    return _ready(ShuffleNet()), (2, 5, 5)


GRAPH_MODELS = {
    "resnet_block": resnet_block,
    "densenet_block": densenet_block,
    "mobilenet_block": mobilenet_block,
    "gated": gated_net,
    "grouped": grouped_net,
    "transpose": transpose_net,
    "upsample": upsample_net,
    "shuffle": shuffle_net,
}
