"""PyTorch models for the PyTorch route (docs/compiler.md): the digits CNN trained on
scikit-learn's digits, the seed's ResNet-18 shape (defined here: torchvision does not import
beside torch 2.13.0, "operator torchvision::nms does not exist"; weights random, for the
latency path) and a model with an op the Edge TPU cannot map. Needs ``edgefleet[torch]``.

The tests (tests/compiler/test_torch_build.py, tests/integration/test_pytorch_rollout.py) and
``build_torch.py`` use these, so what the docs show is what is tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class DigitsCNN(nn.Module):
    """8x8 grayscale digits, NCHW (1, 1, 8, 8) -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class UnmappableCNN(DigitsCNN):
    """The digits CNN with a ``LeakyReLU``: int8 TFLite runs it (LEAKY_RELU) but the Edge TPU
    does not map it, so the pre-check reports it and where the graph is cut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), 0.1)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.down(x))


class ResNet18(nn.Module):
    """torchvision's resnet18 architecture (weights=None): 11.7 M parameters, NCHW 224x224."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def digits_data(seed: int = 0) -> dict[str, np.ndarray]:
    """The compiler's digits split (compiler/digits.py): uint8 pixels (N, 8, 8), labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = np.round(d.images * 255.0 / 16.0).astype(np.uint8)
    tr_x, te_x, tr_y, te_y = train_test_split(pixels, d.target, test_size=360, stratify=d.target, random_state=seed)
    return {"train_x": tr_x, "train_y": tr_y.astype(np.int64), "test_x": te_x, "test_y": te_y.astype(np.int64)}


def train_digits(model: nn.Module, data: dict[str, np.ndarray], epochs: int = 8, seed: int = 0) -> nn.Module:
    """Train on pixel/255 in NCHW (what the bundle's preprocess gives the model)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(data["train_x"].astype(np.float32) / 255.0)[:, None]
    y = torch.from_numpy(data["train_y"])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def export_both(model: nn.Module, sample: torch.Tensor, out: Path, stem: str) -> dict[str, Path]:
    """The seed's ``torch.onnx.export(model, sample, "x.onnx", opset_version=11)`` and a
    ``torch.export`` program saved as ``.pt2``."""
    model.eval()
    onnx_path, pt2_path = out / f"{stem}.onnx", out / f"{stem}.pt2"
    torch.onnx.export(model, (sample,), str(onnx_path), opset_version=11)
    torch.export.save(torch.export.export(model, (sample,)), str(pt2_path))
    return {"onnx": onnx_path, "pt2": pt2_path}


def scores(model: nn.Module, pixels: np.ndarray) -> Any:
    with torch.no_grad():
        return model(torch.from_numpy(pixels.astype(np.float32) / 255.0)[:, None]).numpy()
