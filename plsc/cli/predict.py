"""plsc-predict / tools/predict.py: classify images with a trained or an exported model.

    python tools/predict.py -c CONFIG -o Global.pretrained_model=PREFIX -i IMAGE_OR_DIR
    python tools/predict.py --model-dir OUTPUT/MODEL/export -i IMAGE_OR_DIR [--topk 5]
                            [--json OUT.json] [--batch-size 16] [--device cpu]

Preprocessing is the config's eval transforms (or the exported infer_cfg.yaml, which holds the
same). One line per image: `path: class_name (label) 0.9123 | top-5: ...`. A directory is read
recursively in sorted order; a file that is missing, unreadable or not an image is reported
(`skipped x.jpg: ...`) and the rest are predicted. Exit 0 when any image was predicted, else 2.
"""
import json
import os
import sys

import numpy as np

from ..errors import ConfigError, DataError
from .common import build_parser, config_from_args, run, use_all_cores


def collect_inputs(paths):
    """Files to predict: given files as they are, directories walked recursively (sorted,
    hidden entries skipped). A missing path is kept: it is reported when read."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        else:
            files.append(path)
    return files


def _label(name, label, score):
    return f"{name} ({label}) {score:.4f}" if name is not None else f"{label} {score:.4f}"


def format_result(path, result):
    top = ", ".join(_label(n, l, s) for n, l, s in zip(result["topk_classes"],
                                                        result["topk_labels"],
                                                        result["topk_scores"]))
    return (f"{path}: {_label(result['pred_class'], result['pred_label'], result['pred_score'])}"
            f" | top-{len(result['topk_labels'])}: {top}")


def predict_files(model, files, batch_size=16, topk=None, out=print, err=None):
    """Predict `files` in batches; returns ([(path, result)], [(path, error message)])."""
    from ..apis import postprocess

    err = err or (lambda line: print(line, file=sys.stderr))
    topk = model.topk if topk is None else topk
    done, skipped = [], []
    for start in range(0, len(files), batch_size):
        good, arrays = [], []
        for path in files[start:start + batch_size]:
            try:
                arrays.append(model.preprocess(path))
                good.append(path)
            except DataError as e:
                skipped.append((path, str(e)))
                err(f"skipped {path}: {e}")
        if not arrays:
            continue
        for path, result in zip(good, postprocess(model.logits(np.stack(arrays)), topk,
                                               model.class_names)):
            done.append((path, result))
            out(format_result(path, result))
    return done, skipped


def main(argv=None):
    def _main():
        parser = build_parser("Classify images with a trained or exported model.",
                              config_required=False)
        parser.add_argument("-i", "--input", action="extend", nargs="+", required=True,
                            metavar="IMAGE_OR_DIR", help="image files and/or directories")
        parser.add_argument("--model-dir", help="an exported model directory (tools/export.py)")
        parser.add_argument("--topk", type=int, help="how many classes to list (default: "
                                                     "Infer.topk)")
        parser.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--device", help="cpu, gpu or gpu:N (default: a GPU if visible)")
        args = parser.parse_args(argv)
        if (args.config is None) == (args.model_dir is None):
            raise ConfigError("give either -c CONFIG (with -o Global.pretrained_model=PREFIX) "
                              "or --model-dir EXPORTED_DIR")
        if args.topk is not None and args.topk < 1:
            raise ConfigError(f"--topk must be >= 1, got {args.topk}")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        cfg = config_from_args(args)
        use_all_cores()
        from ..apis import init_model

        if cfg is not None:
            weights = cfg.Global.pretrained_model or cfg.Global.checkpoint
            if not weights:
                raise ConfigError("prediction needs trained weights: set "
                                  "-o Global.pretrained_model=PREFIX (or use --model-dir)")
            model = init_model(cfg, weights, device=args.device)
        else:
            model = init_model(args.model_dir, device=args.device)
        files = collect_inputs(args.input)
        done, skipped = predict_files(model, files, args.batch_size, args.topk)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"model": model.name,
                           "predictions": [{"file": p, **r} for p, r in done],
                           "skipped": [{"file": p, "error": e} for p, e in skipped]}, f,
                          indent=1)
        if not done:
            raise DataError(f"no image could be predicted ({len(skipped)} input(s) skipped)"
                            if files else "no input files found")
        if skipped:
            print(f"predicted {len(done)} image(s), skipped {len(skipped)}", file=sys.stderr)
        return 0

    return run(_main, argv if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
