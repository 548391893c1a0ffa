"""A small CNN crystal-form classifier on per-crystal crops (optional: torch trains it).

1. **Crops** (:func:`crystal_crops`, NumPy only): each crystal's bounding box, padded to
   a square around its centre with a 10 % margin, resized to ``size`` x ``size``; two
   channels: the normalised grey values and the crystal's own mask (neighbours and
   substrate are context, not the crystal). The crop's pixel size after resizing, as
   ``log10(um per crop pixel)``, is a second input, so the network sees size without
   losing the size normalisation.
2. **The network** (:func:`train_cnn`, torch imported lazily): three conv-ReLU-pool
   stages (16, 32, 64 channels), global average pooling, the scale input concatenated,
   a linear layer to the classes; Adam, cross-entropy, augmentation by the 8 flips and
   quarter turns (forms have no preferred orientation) and +-10 % grey gain; seeded.
3. **Export**: ``torch.onnx.export`` (TorchScript exporter) with a dynamic batch; the
   outputs are the softmax probabilities; the class names and the crop size are in the
   ONNX ``volmla`` metadata (format ``volmla-sem-forms-cnn``), so inference needs ONNX
   Runtime only (:func:`classify_crops`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

CNN_FORMAT = "volmla-sem-forms-cnn"
CROP = 48

__all__ = ["CNN_FORMAT", "CROP", "classify_crops", "crystal_crops", "train_cnn"]


def crystal_crops(labels: np.ndarray, image: np.ndarray, table: pd.DataFrame, *, pixel_size: float,
                  size: int = CROP) -> tuple[np.ndarray, np.ndarray]:
    """Size-normalised two-channel crops of each crystal of ``table`` and their scale.

    Parameters
    ----------
    labels
        ``(rows, cols)`` crystal labels.
    image
        The grey image.
    table
        Rows of :func:`~volmla.sem.features.crystal_table` (``crystal_id``, ``bbox``).
    pixel_size
        Micrometres per image pixel.
    size
        Crop edge, pixels.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n, 2, size, size)`` float32 crops and ``(n, 1)`` float32 ``log10`` of the
        micrometres per crop pixel.

    Examples
    --------
    >>> lab = np.zeros((30, 30), np.int32); lab[5:15, 5:20] = 1
    >>> t = pd.DataFrame({"crystal_id": [1], "bbox": [[5, 5, 15, 20]]})
    >>> crops, scale = crystal_crops(lab, lab.astype(float), t, pixel_size=0.1, size=16)
    >>> crops.shape, scale.shape
    ((1, 2, 16, 16), (1, 1))
    """
    from skimage.transform import resize

    from volmla.sem.segment import normalise

    grey = normalise(image) if np.ptp(image) > 0 else np.zeros(image.shape, np.float32)
    rows, cols = labels.shape
    crops = np.zeros((len(table), 2, size, size), np.float32)
    scale = np.zeros((len(table), 1), np.float32)
    for i, (cid, bbox) in enumerate(zip(table.crystal_id, table.bbox, strict=True)):
        r0, c0, r1, c1 = (int(v) for v in bbox)
        half = int(math.ceil(max(r1 - r0, c1 - c0) * 0.55)) + 1
        cr, cc = (r0 + r1) // 2, (c0 + c1) // 2
        box = np.zeros((2, 2 * half, 2 * half), np.float32)
        y0, y1, x0, x1 = max(cr - half, 0), min(cr + half, rows), max(cc - half, 0), min(cc + half, cols)
        oy, ox = y0 - (cr - half), x0 - (cc - half)
        box[0, oy:oy + y1 - y0, ox:ox + x1 - x0] = grey[y0:y1, x0:x1]
        box[1, oy:oy + y1 - y0, ox:ox + x1 - x0] = labels[y0:y1, x0:x1] == cid
        crops[i] = resize(box, (2, size, size), order=1, anti_aliasing=True, preserve_range=True)
        scale[i, 0] = math.log10(pixel_size * 2 * half / size)
    return crops, scale


def _network(n_classes: int) -> Any:
    import torch
    from torch import nn

    class FormNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 2
            for width in (16, 32, 64):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
                channels = width
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(channels + 1, n_classes)

        def forward(self, crops: Any, scale: Any) -> Any:
            pooled = self.features(crops).mean(dim=(2, 3))
            return torch.softmax(self.head(torch.cat([pooled, scale], dim=1)), dim=1)

    return FormNet()


def train_cnn(crops: np.ndarray, scale: np.ndarray, targets: np.ndarray, *, classes: list[str], out: str | Path,
              epochs: int = 20, seed: int = 0, threads: int | None = None) -> float:
    """Train the form CNN on crops and write it as ONNX (class names in its metadata).

    Parameters
    ----------
    crops, scale
        From :func:`crystal_crops`.
    targets
        Class index per crop.
    classes
        Class names.
    out
        The ``.onnx`` file to write.
    epochs
        Passes over the crops.
    seed
        Seed of torch and the augmentation.
    threads
        torch CPU threads (None: torch's default).

    Returns
    -------
    float
        Training accuracy after the last epoch.

    Examples
    --------
    >>> train_cnn(crops, scale, y, classes=["a", "b"], out="cnn.onnx")  # doctest: +SKIP
    """
    try:
        import torch
    except ImportError:
        raise VolmlaError("training the CNN needs torch: pip install 'volmla[train]'") from None
    import onnx

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(int(threads))
    rng = np.random.default_rng(seed)
    net = _network(len(classes))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    x, s, y = torch.from_numpy(crops), torch.from_numpy(scale), torch.from_numpy(targets.astype(np.int64))
    n = len(y)
    correct = 0
    for _ in range(int(epochs)):
        net.train()
        order = torch.from_numpy(rng.permutation(n))
        correct = 0
        for start in range(0, n, 64):
            idx = order[start:start + 64]
            xb = x[idx]
            k = int(rng.integers(4))
            xb = torch.rot90(xb, k, dims=(2, 3))
            if rng.random() < 0.5:
                xb = torch.flip(xb, dims=(3,))
            gain = torch.from_numpy(rng.uniform(0.9, 1.1, (len(idx), 1, 1, 1)).astype(np.float32))
            xb = torch.cat([xb[:, :1] * gain, xb[:, 1:]], dim=1)
            prob = net(xb, s[idx])
            loss = torch.nn.functional.nll_loss(torch.log(prob + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((prob.argmax(1) == y[idx]).sum())
        sched.step()
    net.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".volmla-tmp")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x[:2], s[:2]), str(tmp), dynamo=False, input_names=["crops", "scale"],
                          output_names=["probabilities"],
                          dynamic_axes={"crops": {0: "N"}, "scale": {0: "N"}, "probabilities": {0: "N"}},
                          opset_version=17)
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "volmla", json.dumps({"format": CNN_FORMAT, "classes": list(classes), "crop": CROP})
    onnx.save_model(proto, str(tmp))
    tmp.replace(out)
    accuracy = correct / max(n, 1)
    logger.info("form CNN: %d crops, %d epochs, train accuracy %.3f", n, epochs, accuracy)
    return accuracy


def classify_crops(labels: np.ndarray, image: np.ndarray, table: pd.DataFrame, *, pixel_size: float,
                   model: str | Path) -> tuple[list[str], np.ndarray]:
    """Class name and probability per crystal with the ONNX form CNN.

    Parameters
    ----------
    labels, image, table, pixel_size
        As :func:`crystal_crops`.
    model
        A model written by :func:`train_cnn`.

    Returns
    -------
    tuple
        ``(names, probabilities)``.

    Examples
    --------
    >>> names, prob = classify_crops(labels, image, table, pixel_size=0.1, model="cnn.onnx")  # doctest: +SKIP
    """
    from volmla.segment.sessions import get_session, read_metadata

    meta = read_metadata(model)
    if meta.get("format") != CNN_FORMAT:
        raise VolmlaError(f"model {model} is not a volmla crystal-form CNN (metadata format {meta.get('format')!r})")
    if table.empty:
        return [], np.zeros(0)
    crops, scale = crystal_crops(labels, image, table, pixel_size=pixel_size, size=int(meta.get("crop", CROP)))
    session = get_session(model)
    prob = np.asarray(session.run(None, {"crops": crops, "scale": scale})[0], np.float64)
    classes = [str(c) for c in meta["classes"]]
    return [classes[i] for i in prob.argmax(axis=1)], prob.max(axis=1)
