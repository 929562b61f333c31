"""Example: the seed's case study in PyTorch, exported the seed's way and built from the ONNX.

    python examples/seed_case_study/build_torch.py --out build/seed_case_study_torch

The same pipeline as ``build.py`` (breast-cancer set, 25 % held out, standardised input,
whitened PCA to 8 and standardised K-Means (k = 4) affinities as frozen layers, an autoencoder
8+4 -> 6 -> 8+4 trained unsupervised, a feed-forward head fine-tuned end to end), written as a
``torch.nn.Module``, exported with ``torch.onnx.export(model, sample, "x.onnx", opset_version=11)``
and built with ``edgefleet-compile build x.onnx``: float + full-int8 TFLite, the gate against the
float ONNX, and the ONNX itself as the twin. Needs ``edgefleet[torch]`` (docs/compiler.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compiler.__main__ import main as compile_main  # noqa: E402

PCA_DIM, K, CODE = 8, 4, 6


def make_model(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0) -> object:
    import torch
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from torch import nn

    torch.manual_seed(seed)
    pca = PCA(PCA_DIM, whiten=True, random_state=seed).fit(x_train)
    z = pca.transform(x_train)
    km = KMeans(K, n_init=10, random_state=seed).fit(z)
    c = km.cluster_centers_
    w_pca = pca.components_.T / np.sqrt(pca.explained_variance_)
    b_pca = -pca.mean_ @ w_pca
    aff = z @ (-2 * c.T) + (c**2).sum(axis=1)
    a_mean, a_std = aff.mean(axis=0), aff.std(axis=0) + 1e-6

    def frozen(w: np.ndarray, b: np.ndarray) -> nn.Linear:
        lin = nn.Linear(w.shape[0], w.shape[1])
        lin.weight.data = torch.tensor(w.T, dtype=torch.float32)
        lin.bias.data = torch.tensor(b, dtype=torch.float32)
        lin.requires_grad_(False)
        return lin

    class CaseStudy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pca = frozen(w_pca, b_pca)
            self.kmeans_affinity = frozen(-2 * c.T / a_std, ((c**2).sum(axis=1) - a_mean) / a_std)
            self.encoder = nn.Linear(PCA_DIM + K, CODE)
            self.decoder = nn.Linear(CODE, PCA_DIM + K)
            self.hidden = nn.Linear(CODE, 16)
            self.out = nn.Linear(16, int(y_train.max()) + 1)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            zt = self.pca(x)
            return torch.cat([zt, self.kmeans_affinity(zt)], dim=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(torch.relu(self.encoder(self.features(x))))))

    model = CaseStudy()
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train, dtype=torch.int64)
    feats = model.features(xt).detach()
    ae = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(ae, 1e-3)
    for _ in range(30):  # the autoencoder, unsupervised
        for idx in torch.randperm(len(feats)).split(16):
            opt.zero_grad()
            f = feats[idx]
            nn.functional.mse_loss(model.decoder(torch.relu(model.encoder(f))), f).backward()
            opt.step()
    head = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(head, 3e-3)
    for _ in range(60):  # the classifier on the code, fine-tuned end to end
        for idx in torch.randperm(len(xt)).split(16):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-accuracy-drop", type=float, default=2.0, help="as build.py (143 rows: one flip is 0.7)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    d = load_breast_cancer()
    x = d.data.astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=a.seed)
    mean, std = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_name(a.out.name + ".standardise.json").write_text(
        json.dumps({"features": list(d.feature_names), "mean": mean.tolist(), "std": std.tolist()})
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = make_model(xtr, ytr, a.seed)
        onnx_path = t / "seed_case_study.onnx"
        torch.onnx.export(model, (torch.zeros(1, x.shape[1]),), str(onnx_path), opset_version=11)  # the seed's call
        np.savez(t / "cal.npz", x=xtr)
        np.savez(t / "val.npz", x=xte, y=yte)
        (t / "labels.txt").write_text("\n".join(d.target_names) + "\n")
        args = [
            "build",
            str(onnx_path),
            "--calibration",
            str(t / "cal.npz"),
            "--validation",
            str(t / "val.npz"),
            "--labels",
            str(t / "labels.txt"),
            "--out",
            str(a.out),
            "--name",
            "seed_case_study_torch",
            "--max-accuracy-drop",
            str(a.max_accuracy_drop),
        ]
        return compile_main(args + (["--quiet"] if a.quiet else []))


if __name__ == "__main__":
    sys.exit(main())
