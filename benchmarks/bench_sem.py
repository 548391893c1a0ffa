"""SEM crystals: segmentation, classification and crystallometry on held-out synthetic images.

Measures, in one run on one machine:

1. **training**: the random-forest form classifier
   (:func:`volmla.sem.train_classifier`) on the classical segmentation of ``--train``
   synthetic images (seeds 0..), 1024 x 768 pixels, 40 crystals each, occlusion
   ``overlap=0.75``, the generator's default mild stage-tilt perspective (0.03,
   ``--perspective``);
2. **held-out images** (seeds 10000.., ``--test-seed`` for a second held-out set): instance segmentation against the truth (visible
   parts): the fraction of true crystals matched at IoU >= 0.7, the mean IoU of those
   matches, AP50 (:func:`volmla.sem.score_instances`, pooled over the images);
3. **classification** of the matched crystals (IoU >= 0.5): top-1 accuracy, top-2, and
   the confusion matrix (rows true, columns predicted, :data:`SEM_CLASSES` order); top-1
   also of the crystals matched at IoU >= 0.7, and apart for the crystals cut by the
   image border and the others (the border's share grows with the perspective, whose
   view crops into the scene);
4. **crystallometry** of the crystals matched at IoU >= 0.7: relative error of the
   equivalent diameter and of the aspect ratio against the same measurement on the true
   mask (median and 90th percentile of the absolute errors, and the mean signed
   error), and for crystals neither occluded nor cut by the border the error against
   the generator's diameter of the whole crystal;
5. **throughput**: megapixels per second of one core (one process, one thread) for
   segmentation + measurement + classification (the ONNX forest), timed per image after
   one warm-up image (lazy imports, the ONNX session); wall time and this process's CPU
   time (the fair figure on a shared machine: the load average is recorded too).

With ``--segmenter-train N`` the border-core segmenter
(:func:`volmla.sem.train_segmenter`, ``--segmenter-iterations`` steps) is trained on N
synthetic images (seeds 0..) and scored on the same held-out images beside the
classical path (``segmentation_model``: matched at IoU >= 0.7, mean IoU, AP50,
segmentation megapixels per second) and the same forest classifies the crystals it
finds that match a true crystal at IoU >= 0.7 (``segmentation_model.classification``:
top-1 and confusion matrix). With ``--cnn`` the optional crop CNN (:mod:`volmla.sem.cnn`) is trained on the same
synthetic images and scored on the same matched crystals (``classification_cnn``).

``python benchmarks/bench_sem.py`` runs the quick check (8 training, 4 held-out images;
about a minute); ``--train 80 --test 10`` the full run (80: the default classifier of
``volmla sem train``). Results go to stdout and
``benchmarks/results/sem.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from volmla.segment.sessions import get_session
from volmla.sem import (
    classify_table,
    crystal_table,
    match_instances,
    save_classifier,
    segment_crystals,
    synthetic_training_table,
    train_classifier,
)
from volmla.sem.evaluate import average_precision
from volmla.synthetic.sem import SEM_CLASSES, sem_image

RESULTS = Path(__file__).parent / "results" / "sem.json"
OPTIONS: dict[str, Any] = {"shape": (768, 1024), "n_crystals": 40, "overlap": 0.75, "perspective": 0.03}


def _confusion(y_true: list[int], y_pred: list[int]) -> list[list[int]]:
    cm = np.zeros((len(SEM_CLASSES), len(SEM_CLASSES)), int)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    return cm.tolist()


def _top1(y_true: list[int], y_pred: list[int]) -> float | None:
    return round(float(np.mean(np.array(y_true) == np.array(y_pred))), 4) if y_true else None


def run(n_train: int, n_test: int, cnn: bool = False, epochs: int = 30, seg_train: int = 0,
        seg_iterations: int = 600, test_seed: int = 10000, labelled: Path | None = None,
        pixel_size: float | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    table = synthetic_training_table(n_images=n_train, seed=0, **OPTIONS)
    clf = train_classifier(table, n_estimators=300, seed=0)
    model = save_classifier(clf, Path(tempfile.mkdtemp()) / "forms.onnx")
    train_s = time.perf_counter() - t0
    cnn_model = None
    if cnn:
        from volmla.sem.classify import train_forms

        t1 = time.perf_counter()
        cnn_model = Path(tempfile.mkdtemp()) / "forms_cnn.onnx"
        train_forms(cnn_model, kind="cnn", n_images=n_train, epochs=epochs, seed=0)
        cnn_s = time.perf_counter() - t1
    y_cnn: list[int] = []
    seg_model = None
    if seg_train:
        from volmla.sem import segment_with_model, train_segmenter

        seg_fit = train_segmenter(Path(tempfile.mkdtemp()) / "segmenter.onnx", n_images=seg_train,
                                  iterations=seg_iterations, seed=0, threads=1, **OPTIONS)  # type: ignore[arg-type]
        seg_model = seg_fit.path
        segment_with_model(sem_image(seed=9998, **OPTIONS).image, model=seg_model)  # type: ignore[arg-type]
    seg_matched: list[float] = []
    seg_hits: list[tuple[float, bool]] = []
    seg_pred = 0
    seg_seconds = seg_cpu = 0.0
    seg_y_true: list[int] = []
    seg_y_pred: list[int] = []
    border: list[bool] = []
    y07: list[bool] = []
    get_session(model)  # warm the per-process cache and the lazy imports before timing
    warm = sem_image(seed=9999, **OPTIONS)  # type: ignore[arg-type]
    classify_table(crystal_table(segment_crystals(warm.image), warm.image, pixel_size=warm.pixel_size), model=model)

    n_true = n_pred = 0
    matched_07: list[float] = []
    ap_hits: list[tuple[float, bool]] = []
    y_true: list[int] = []
    y_pred: list[int] = []
    top2: list[bool] = []
    size_err: list[float] = []
    aspect_err: list[float] = []
    whole_err: list[float] = []
    pixels = 0
    seconds = 0.0
    cpu_seconds = 0.0
    for k in range(n_test):
        s = sem_image(seed=test_seed + k, **OPTIONS)  # type: ignore[arg-type]
        rows = s.image.shape[0] - s.bar_rows
        image, truth = s.image[:rows], s.labels[:rows]
        start, cpu = time.perf_counter(), time.process_time()
        pred = segment_crystals(image)
        measured = crystal_table(pred, image, pixel_size=s.pixel_size)
        names, prob = classify_table(measured, model=model)
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu
        pixels += image.size
        if seg_model is not None:
            start, cpu = time.perf_counter(), time.process_time()
            spred = segment_with_model(image, model=seg_model)
            seg_seconds += time.perf_counter() - start
            seg_cpu += time.process_time() - cpu
            sti7, spi7, siou = match_instances(truth, spred, iou=0.7)
            seg_matched += list(siou)
            smeasured = crystal_table(spred, image, pixel_size=s.pixel_size)
            snames, _ = classify_table(smeasured, model=model)
            srow = {int(c): i for i, c in enumerate(smeasured.crystal_id)}
            seg_y_true += [int(s.classes[t - 1]) for t in sti7]
            seg_y_pred += [SEM_CLASSES.index(snames[srow[int(p)]]) for p in spi7]
            _, spi5, _ = match_instances(truth, spred, iou=0.5)
            shit = set(spi5.tolist())
            sarea = np.bincount(spred.ravel())
            sids = np.unique(spred[spred > 0])
            seg_pred += len(sids)
            seg_hits += [(float(sarea[p]), p in shit) for p in sids]
        true_ids = np.unique(truth[truth > 0])
        pred_ids = np.unique(pred[pred > 0])
        n_true += len(true_ids)
        n_pred += len(pred_ids)
        ti7, pi7, iou7 = match_instances(truth, pred, iou=0.7)
        matched_07 += list(iou7)
        ti5, pi5, _ = match_instances(truth, pred, iou=0.5)
        hit5 = set(pi5.tolist())
        area = np.bincount(pred.ravel())
        ap_hits += [(float(area[p]), p in hit5) for p in pred_ids]
        # classification of crystals matched at 0.5 (full probabilities for top-2)
        from volmla.sem.classify import load_classifier

        meta = load_classifier(model)
        sess = get_session(model)
        x = measured[list(meta["features"])].to_numpy(np.float32)  # type: ignore[call-overload]
        probs = np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[1]) if len(x) else np.zeros((0, 4))
        row_of = {int(c): i for i, c in enumerate(measured.crystal_id)}
        outputs = np.asarray(meta["outputs"])  # type: ignore[call-overload]
        for t, p in zip(ti5, pi5, strict=True):
            i = row_of[int(p)]
            true_class = int(s.classes[t - 1])
            y_true.append(true_class)
            y_pred.append(SEM_CLASSES.index(names[i]))
            top2.append(true_class in outputs[np.argsort(-probs[i])[:2]])
            border.append(bool(measured.touches_border.iloc[i]))
            y07.append(int(p) in set(pi7.tolist()))
        if cnn_model is not None:
            from volmla.sem import classify_crystals

            cnn_names, _ = classify_crystals(pred, image, measured, pixel_size=s.pixel_size, model=cnn_model)
            y_cnn += [SEM_CLASSES.index(cnn_names[row_of[int(p)]]) for p in pi5]
        # crystallometry against the same measurement on the true masks
        true_table = crystal_table(truth, image, pixel_size=s.pixel_size).set_index("crystal_id")
        m = measured.set_index("crystal_id")
        d_true = true_table.loc[ti7, "equivalent_diameter_um"].to_numpy()
        size_err += list(m.loc[pi7, "equivalent_diameter_um"].to_numpy() / d_true - 1)
        aspect_err += list(m.loc[pi7, "aspect_ratio"].to_numpy() / true_table.loc[ti7, "aspect_ratio"].to_numpy() - 1)
        whole = 2 * np.sqrt(np.bincount(truth.ravel(), minlength=len(s.classes) + 1)[1:] / np.pi) * s.pixel_size
        complete = np.isclose(whole, s.diameter_um, rtol=1e-9)
        for t, p in zip(ti7, pi7, strict=True):
            if complete[t - 1] and not bool(true_table.loc[t, "touches_border"]):
                whole_err.append(float(m.loc[p, "equivalent_diameter_um"] / s.diameter_um[t - 1] - 1))

    ap50 = average_precision(ap_hits, n_true)
    right = np.array(y_true) == np.array(y_pred)
    cut, at07 = np.array(border, bool), np.array(y07, bool)
    se, ae, we = np.abs(size_err), np.abs(aspect_err), np.abs(whole_err)
    extra: dict[str, Any] = {}
    if seg_model is not None:
        extra["segmentation_model"] = {
            "train_images": seg_train, "iterations": seg_iterations, "best_iteration": seg_fit.best_iteration,
            "val_pixel_accuracy": round(seg_fit.val_accuracy, 4), "train_seconds": round(seg_fit.seconds, 1),
            "true_crystals": n_true, "predicted": seg_pred,
            "matched_iou07": round(len(seg_matched) / max(n_true, 1), 4),
            "mean_iou_of_matches": round(float(np.mean(seg_matched)), 4) if seg_matched else None,
            "ap50": round(average_precision(seg_hits, n_true), 4),
            "segmentation_megapixels_per_second": round(pixels / 1e6 / seg_seconds, 3),
            "segmentation_megapixels_per_cpu_second": round(pixels / 1e6 / seg_cpu, 3),
            "classification": {"crystals_matched_iou07": len(seg_y_true), "top1": _top1(seg_y_true, seg_y_pred),
                               "confusion_rows_true": _confusion(seg_y_true, seg_y_pred)}}
    if labelled is not None:
        from volmla.sem import evaluate_folder

        extra["labelled_folder"] = {"folder": str(labelled),
                                    "classical": evaluate_folder(labelled, model=model, pixel_size=pixel_size)}
        if seg_model is not None:
            extra["labelled_folder"]["segmenter"] = evaluate_folder(labelled, model=model, segmenter=seg_model,
                                                                    pixel_size=pixel_size)
    if cnn_model is not None:
        extra["classification_cnn"] = {"crystals": len(y_cnn), "epochs": epochs, "train_seconds": round(cnn_s, 1),
                                       "top1": _top1(y_true, y_cnn), "confusion_rows_true": _confusion(y_true, y_cnn)}
    return {
        "images": {"train": n_train, "test": n_test, "shape": list(OPTIONS["shape"]), "crystals_per_image": 40,
                   "overlap": OPTIONS["overlap"], "perspective": OPTIONS["perspective"], "test_seeds": [test_seed, test_seed + n_test - 1],
                   "training_crystals": len(table), "train_seconds": round(train_s, 1)},
        "segmentation": {"true_crystals": n_true, "predicted": n_pred,
                         "matched_iou07": round(len(matched_07) / max(n_true, 1), 4),
                         "mean_iou_of_matches": round(float(np.mean(matched_07)), 4), "ap50": round(ap50, 4)},
        "classification": {"crystals": len(y_true), "top1": round(float(right.mean()), 4),
                           "top2": round(float(np.mean(top2)), 4), "classes": list(SEM_CLASSES),
                           "confusion_rows_true": _confusion(y_true, y_pred),
                           "crystals_matched_iou07": int(at07.sum()),
                           "top1_matched_iou07": round(float(right[at07].mean()), 4) if at07.any() else None,
                           "crystals_cut_by_border": int(cut.sum()),
                           "top1_cut_by_border": round(float(right[cut].mean()), 4) if cut.any() else None,
                           "top1_inside": round(float(right[~cut].mean()), 4) if (~cut).any() else None},
        "size": {"crystals": len(se), "equivalent_diameter_abs_rel_err_median": round(float(np.median(se)), 4),
                 "equivalent_diameter_abs_rel_err_p90": round(float(np.percentile(se, 90)), 4),
                 "equivalent_diameter_mean_signed_rel_err": round(float(np.mean(size_err)), 4),
                 "aspect_abs_rel_err_median": round(float(np.median(ae)), 4),
                 "aspect_abs_rel_err_p90": round(float(np.percentile(ae, 90)), 4),
                 "whole_crystals": len(we),
                 "whole_diameter_abs_rel_err_median": round(float(np.median(we)), 4) if len(we) else None},
        "throughput": {"megapixels": round(pixels / 1e6, 2), "wall_seconds": round(seconds, 2),
                       "cpu_seconds": round(cpu_seconds, 2),
                       "megapixels_per_second_one_core": round(pixels / 1e6 / seconds, 3),
                       "megapixels_per_cpu_second": round(pixels / 1e6 / cpu_seconds, 3),
                       "images_per_second_one_core": round(n_test / seconds, 3)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "processor": platform.processor(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "targets": {"matched_iou07": 0.9, "top1": 0.92, "size_within": 0.05, "megapixels_per_second_one_core": 1.0},
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--train", type=int, default=8, help="training images (8: quick; 40: full)")
    ap.add_argument("--test", type=int, default=4, help="held-out images (4: quick; 20: full)")
    ap.add_argument("--cnn", action="store_true", help="also train and score the crop CNN (needs torch; slow on CPU)")
    ap.add_argument("--epochs", type=int, default=30, help="CNN training passes")
    ap.add_argument("--segmenter-train", type=int, default=0,
                    help="also train the border-core segmenter on this many synthetic images and score it (needs torch)")
    ap.add_argument("--segmenter-iterations", type=int, default=600, help="segmenter optimisation steps (at most)")
    ap.add_argument("--perspective", type=float, default=0.03, help="stage-tilt perspective of the images (0: none)")
    ap.add_argument("--test-seed", type=int, default=10000, help="first seed of the held-out images")
    ap.add_argument("--labelled", type=Path, default=None,
                    help="also score a folder of your own labelled micrographs (NAME.tif|png|jpg + NAME.labels.tif "
                         "[+ NAME.classes.csv]) with the same classifier (and segmenter)")
    ap.add_argument("--pixel-size", type=float, default=None, help="um per pixel of --labelled images without tags")
    args = ap.parse_args()
    OPTIONS["perspective"] = args.perspective
    result = run(args.train, args.test, cnn=args.cnn, epochs=args.epochs, seg_train=args.segmenter_train,
                 seg_iterations=args.segmenter_iterations, test_seed=args.test_seed, labelled=args.labelled,
                 pixel_size=args.pixel_size)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
