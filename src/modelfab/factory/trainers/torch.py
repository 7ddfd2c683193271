"""torch trainers: the networks of the ``cnn``, ``resnet`` and ``torch_mlp`` families and their training loop.

Every network is ``preprocess -> body -> head`` so that what the exported graph computes is the module
that was trained: images arrive as uint8 NHWC pixels (normalisation and the move to NCHW happen inside),
tabular rows as float features with NaN for missing (imputed and standardised inside). Fine-tuning the
head only freezes ``body``; a base's ``head`` is reused when the classes match.

Seeded: ``torch.manual_seed`` and a numpy generator for the batch order and the augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfab.errors import TrainingError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TorchParams", "build_network", "fit_network", "load_state", "predict_proba", "state_arrays"]

# Fixed normalisation (not per-partition statistics): per-partition models of one architecture then have
# the same graph apart from their weights, and a base's weights see the inputs they were trained on.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


GRID = 4  # the cnn's spatial head: features of a GRID x GRID pooling


@dataclass(frozen=True)
class TorchParams:
    epochs: int = 3
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    augment: tuple[str, ...] = ()
    early_stopping: int | None = None  # patience in epochs on an inner validation split
    channels: int = 16
    depth: int | None = None
    width: int = 16
    hidden: tuple[int, ...] = (64,)

    @classmethod
    def of(cls, params: dict[str, Any]) -> TorchParams:
        kw = dict(params)
        if "augment" in kw:
            kw["augment"] = tuple(kw["augment"])
        if "hidden" in kw:
            kw["hidden"] = tuple(int(h) for h in kw["hidden"])
        if "lr" in kw:
            kw["lr"] = float(kw["lr"])
        return cls(**kw)


def build_network(
    family: str,
    p: TorchParams,
    outputs: int,
    *,
    features: int = 0,
    stats: dict[str, np.ndarray] | None = None,
) -> nn.Module:
    """The untrained network of ``family`` with ``outputs`` logits (or one regression output)."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self, pre: nn.Module, body: nn.Module, head: nn.Module) -> None:
            super().__init__()
            self.pre, self.body, self.head = pre, body, head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(self.body(self.pre(x)))
            return out

    if family == "cnn":
        body, width = _cnn_body(p.channels, p.depth or 2)
        return Net(_image_pre(), body, nn.Linear(width, outputs))
    if family == "resnet":
        body, width = _resnet_body(p.depth or 8, p.width)
        return Net(_image_pre(), body, nn.Linear(width, outputs))
    if family == "torch_mlp":
        if stats is None:
            raise ValueError("torch_mlp needs the training features' statistics")
        layers: list[nn.Module] = []
        last = features
        for h in p.hidden:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        return Net(_tabular_pre(stats), nn.Sequential(*layers), nn.Linear(last, outputs))
    raise ValueError(f"family {family!r} is not a torch family")


def _image_pre() -> nn.Module:
    import torch
    from torch import nn

    class ImagePre(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # uint8 (served) or float (training, after augmentation) pixels 0-255, NHWC -> NCHW
            x = x.to(dtype=torch.float32) / 255.0
            return (x.permute(0, 3, 1, 2) - PIXEL_MEAN) / PIXEL_STD

    return ImagePre()


def _tabular_pre(stats: dict[str, np.ndarray]) -> nn.Module:
    import torch
    from torch import nn

    class TabularPre(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("median", torch.tensor(stats["median"], dtype=torch.float32))
            self.register_buffer("mean", torch.tensor(stats["mean"], dtype=torch.float32))
            self.register_buffer("scale", torch.tensor(stats["scale"], dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            median, mean, scale = self.get_buffer("median"), self.get_buffer("mean"), self.get_buffer("scale")
            x = torch.where(torch.isnan(x), median, x)
            return (x - mean) / scale

    return TabularPre()


def _cnn_body(channels: int, depth: int) -> tuple[nn.Module, int]:
    from torch import nn

    layers: list[nn.Module] = []
    last = 3
    for i in range(depth):
        width = channels * 2 ** min(i, 3)
        layers += [nn.Conv2d(last, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i < depth - 1:
            layers.append(nn.MaxPool2d(2))
        last = width
    # A 4x4 grid rather than one global average: "is a bike parked HERE" depends on where in the frame
    # it is, which a global pool throws away (per-camera accuracy stalled near 0.75 on camera_frame).
    layers += [nn.AdaptiveAvgPool2d(GRID), nn.Flatten()]
    return nn.Sequential(*layers), last * GRID * GRID


def _resnet_body(depth: int, width: int) -> tuple[nn.Module, int]:
    """CIFAR-style ResNet (He et al. 2016, section 4.2): depth 6n+2, three stages of n basic blocks."""
    from torch import nn

    if depth < 8 or (depth - 2) % 6:
        raise TrainingError(f"resnet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
    n = (depth - 2) // 6

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.short: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            result: torch.Tensor = self.relu(out + self.short(x))
            return result

    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    last = width
    for stage, mult in enumerate((1, 2, 4)):
        for b in range(n):
            layers.append(Block(last, width * mult, 2 if stage > 0 and b == 0 else 1))
            last = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), last


def fit_network(
    net: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    p: TorchParams,
    seed: int,
    *,
    regression: bool = False,
    head_only: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``net`` in place on ``x`` (uint8 NHWC images or float features) and ``y`` (class indices, or
    standardised targets for regression), on ``device`` (``cuda`` when the recipe asks for GPUs and one is
    there; see :func:`training_device`); the network comes back on the CPU, ready to export. Returns what
    happened: epochs run, the best validation loss."""
    import torch
    from torch import nn

    net.to(device)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(y)
    val_idx = np.zeros(0, dtype=np.int64)
    if p.early_stopping is not None and n >= 10:
        order = rng.permutation(n)
        cut = max(1, n // 5)
        val_idx, train_idx = np.sort(order[:cut]), np.sort(order[cut:])
    else:
        train_idx = np.arange(n)
    params = [q for name, q in net.named_parameters() if not head_only or name.startswith("head.")]
    if head_only:
        for name, q in net.named_parameters():
            q.requires_grad_(name.startswith("head."))
    opt = _optimizer(p, params)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / p.batch_size))
    sched = _schedule(p, opt, p.epochs * steps_per_epoch)
    loss_fn: nn.Module = nn.MSELoss() if regression else nn.CrossEntropyLoss()
    target = torch.as_tensor(y, dtype=torch.float32 if regression else torch.int64).to(device)
    best, best_state, stale, epochs = math.inf, None, 0, 0
    for _ in range(p.epochs):
        net.train()
        if head_only:
            net.get_submodule("body").eval()  # frozen: keep the base's batch-norm statistics
        order = rng.permutation(train_idx)
        for start in range(0, len(order), p.batch_size):
            idx = order[start : start + p.batch_size]
            if len(idx) < 2 and not regression and len(order) > 1:
                continue  # batch norm cannot train on one sample
            xb = _inputs(x[idx], p.augment, rng).to(device)
            out = net(xb)
            loss = loss_fn(out.squeeze(1) if regression else out, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        epochs += 1
        if len(val_idx):
            net.eval()
            with torch.no_grad():
                out = net(_inputs(x[val_idx], (), rng).to(device))
                val = float(loss_fn(out.squeeze(1) if regression else out, target[val_idx]))
            if val < best - 1e-6:
                best, stale = val, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            else:
                stale += 1
                if p.early_stopping is not None and stale >= p.early_stopping:
                    break
    net.to("cpu")
    if best_state is not None:
        net.load_state_dict(best_state)
    for q in net.parameters():
        q.requires_grad_(True)
    net.eval()
    return {"epochs_run": epochs, "best_validation_loss": None if math.isinf(best) else best}


def training_device(gpus: float) -> str:
    """``cuda`` when the recipe's ``resources.gpus`` asks for a GPU and torch sees one, else ``cpu``."""
    if gpus <= 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(x: np.ndarray, augment: tuple[str, ...], rng: np.random.Generator) -> torch.Tensor:
    """A batch as a tensor: images as float pixels NHWC (0-255), augmented; features as float32."""
    import torch

    if x.dtype != np.uint8:
        return torch.as_tensor(np.asarray(x, dtype=np.float32))
    batch = x.astype(np.float32)
    if "flip" in augment:
        flip = rng.random(len(batch)) < 0.5
        batch[flip] = batch[flip, :, ::-1]
    if "crop" in augment:
        pad = max(1, batch.shape[1] // 8)
        padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        h, w = batch.shape[1:3]
        dy, dx = rng.integers(0, 2 * pad + 1, size=(2, len(batch)))
        batch = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(len(batch))])
    if "color" in augment:
        gain = rng.uniform(0.8, 1.2, size=(len(batch), 1, 1, 3)).astype(np.float32)
        shift = rng.uniform(-20, 20, size=(len(batch), 1, 1, 1)).astype(np.float32)
        batch = np.clip(batch * gain + shift, 0, 255)
    return torch.from_numpy(np.ascontiguousarray(batch))


def _optimizer(p: TorchParams, params: list[Any]) -> Any:
    import torch

    if p.optimizer == "adam":
        return torch.optim.Adam(params, lr=p.lr)
    if p.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=p.lr)
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, momentum=0.9)
    raise TrainingError(f"optimizer {p.optimizer!r} is not known")


def _schedule(p: TorchParams, opt: Any, total_steps: int) -> Any:
    import torch

    if p.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if p.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def predict_proba(
    net: nn.Module, x: np.ndarray, *, classify: bool = True, batch_size: int = 256
) -> np.ndarray:
    """Softmax probabilities (classification) or raw outputs, as float64 numpy."""
    import torch

    net.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start : start + batch_size])
            if xb.dtype != torch.uint8:
                xb = xb.to(torch.float32)
            out = net(xb)
            outs.append(torch.softmax(out, dim=1) if classify else out)
    return np.asarray(torch.cat(outs).numpy(), dtype=np.float64) if outs else np.zeros((0, 1))


def state_arrays(net: nn.Module) -> bytes:
    """The network's state as an ``.npz`` of plain arrays (no pickle), byte-identical for equal weights
    (fixed entry times) so the content-addressed store keeps one copy."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, tensor in net.state_dict().items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(entry, "w") as f:
                np.lib.format.write_array(f, tensor.detach().cpu().numpy(), allow_pickle=False)
    return buf.getvalue()


def load_state(net: nn.Module, data: bytes, *, with_head: bool) -> list[str]:
    """Load weights written by :func:`state_arrays` into ``net`` where names and shapes match; the head only
    when ``with_head``. Returns the names loaded. Refuses a file with nothing that fits."""
    import io

    import torch

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    own = net.state_dict()
    loaded = {}
    for k, v in arrays.items():
        if k in own and tuple(own[k].shape) == v.shape and (with_head or not k.startswith("head.")):
            loaded[k] = torch.from_numpy(v.copy()).to(own[k].dtype)
    if not any(k.startswith("body.") for k in loaded):
        raise TrainingError(
            "the base's weights do not fit this architecture: check the base's family and params"
        )
    net.load_state_dict(loaded, strict=False)
    return sorted(loaded)
