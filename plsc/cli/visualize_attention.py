"""plsc-visualize-attention / tools/visualize_attention.py: attention rollout heat maps.

    python tools/visualize_attention.py -c CONFIG -o Global.pretrained_model=PREFIX \
        -i IMAGE_OR_DIR [--out DIR] [--discard-ratio 0.9]

For each image: attention rollout (Abnar & Zuidema 2020; plsc.apis.attention_rollout) of the
class token (the mean row for gap models) over the patch grid, written as
  {out}/{stem}_rollout.png   the map (min-max scaled, JET colours) blended over the image as the
                             model sees it (after the eval resize/crop), enlarged by a whole
                             factor to >= 256 px on the short side
  {out}/{stem}_rollout.npy   the raw map [grid_h, grid_w], float64
{stem} is the image's name without extension; where inputs share a name, their path relative
to their common folder (so same-named images from different folders never overwrite).
"""
import os
import sys

import numpy as np

from ..errors import ConfigError, DataError
from .common import build_parser, config_from_args, run, use_all_cores


def heatmap_overlay(image, rollout, alpha=0.5):
    """HWC uint8 RGB image + [h, w] map -> HWC uint8 RGB blend (map upsampled bilinearly)."""
    import cv2

    h, w = image.shape[:2]
    m = np.asarray(rollout, dtype=np.float64)
    span = m.max() - m.min()
    m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
    m = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(np.clip(m, 0, 1) * 255), cv2.COLORMAP_JET)[:, :, ::-1]
    blend = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.uint8(np.clip(np.rint(blend), 0, 255))


VIEW_SIDE = 256  # short side of the saved PNG: a 32 px model input is unreadable at 1:1


def view_image(image, min_side=VIEW_SIDE):
    """The model's input enlarged by a whole factor so its short side is >= min_side; nearest
    neighbour, so every input pixel stays a visible, exact block."""
    factor = max(1, -(-min_side // min(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def output_stems(files, out_dir):
    """{file: output path stem}: `{out_dir}/{name}_rollout` where name is the file name without
    extension; for names several inputs share, their paths relative to those inputs' common
    folder instead (with the extension where that still collides). So same-named images from
    different folders never overwrite each other."""
    def name(f):
        return os.path.splitext(os.path.basename(f))[0]

    stems = {}
    for key in {name(f) for f in files}:
        group = [f for f in files if name(f) == key]
        if len(group) == 1:
            stems[group[0]] = key
            continue
        base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in group])
        rel = {f: os.path.relpath(os.path.abspath(f), base) for f in group}
        plain = [os.path.splitext(r)[0] for r in rel.values()]
        for f, r in rel.items():
            stems[f] = r if plain.count(os.path.splitext(r)[0]) > 1 else os.path.splitext(r)[0]
    return {f: os.path.join(out_dir, stems[f] + "_rollout") for f in files}


def main(argv=None):
    def _main():
        parser = build_parser("Attention rollout heat maps of a trained ViT.")
        parser.add_argument("-i", "--input", action="extend", nargs="+", required=True,
                            metavar="IMAGE_OR_DIR")
        parser.add_argument("--out", default=None,
                            help="output directory (default {output_dir}/{Model.name}/attention)")
        parser.add_argument("--discard-ratio", type=float, default=0.0,
                            help="zero this fraction of the weakest attention per layer "
                                 "(0.9 sharpens maps; default 0 = plain rollout)")
        parser.add_argument("--device", help="cpu, gpu or gpu:N")
        args = parser.parse_args(argv)
        cfg = config_from_args(args)
        if not 0.0 <= args.discard_ratio < 1.0:
            raise ConfigError(f"--discard-ratio must be in [0, 1), got {args.discard_ratio}")
        weights = cfg.Global.pretrained_model or cfg.Global.checkpoint
        if not weights:
            raise ConfigError("visualisation needs trained weights: set "
                              "-o Global.pretrained_model=PREFIX")
        use_all_cores()
        import cv2

        from ..apis import attention_map, init_model
        from .predict import collect_inputs

        model = init_model(cfg, weights, device=args.device)
        out_dir = args.out or os.path.join(cfg.Global.output_dir, cfg.Model.name, "attention")
        os.makedirs(out_dir, exist_ok=True)
        written = 0
        files = collect_inputs(args.input)
        stems = output_stems(files, out_dir)
        for path in files:
            try:
                rollout, image = attention_map(model, path, args.discard_ratio)
            except DataError as e:
                print(f"skipped {path}: {e}", file=sys.stderr)
                continue
            stem = stems[path]
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            np.save(stem + ".npy", rollout)
            blend = heatmap_overlay(view_image(image), rollout)
            if not cv2.imwrite(stem + ".png", blend[:, :, ::-1]):
                raise DataError(f"cannot write {stem}.png")
            print(f"{path}: {stem}.png, {stem}.npy (grid {rollout.shape[0]}x{rollout.shape[1]})")
            written += 1
        if not written:
            raise DataError("no image could be processed")
        return 0

    return run(_main, argv if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
