"""Loading pretrained weights into a model: `Global.pretrained_model` (+ `Global.finetune`).

Accepted sources: a `.pdparams` file (ours or PLSC's, given by prefix or full name; PLSC's O2
checkpoints hold fp16 tensors), an official `.npz` (converted on the fly) or a timm
`.safetensors` file (converted on the fly).

We never call `Layer.set_state_dict`: with a shape mismatch it only warns and skips the
tensor, so a wrong checkpoint would silently train from random init. Instead every key and
shape is checked first and each tensor is assigned with `set_value`.
"""
import numpy as np

from ..errors import ConfigError
from ..models.pos_embed import METHODS, resize_pos_embed
from .common import load_pdparams, name_list, pdparams_path

HEAD_LAYERS = ("head0", "head")  # pre-logits first: dropping it invalidates the head's input


def read_checkpoint(path):
    """{name: np.ndarray} in our layout from any accepted checkpoint file."""
    if path.endswith(".npz"):
        from .npz import load_npz_as_state
        return load_npz_as_state(path)[0]
    if path.endswith(".safetensors"):
        from .timm import load_timm_as_state
        return load_timm_as_state(path, num_heads=1)[0]  # the fused layout ignores heads
    return load_pdparams(pdparams_path(path))


def _shape(a):
    return tuple(int(v) for v in a.shape)


def _layer_keys(keys, layer):
    return [k for k in keys if k.split(".")[0] == layer]


def _fmt_mismatch(k, ckpt, model):
    return f"{k} checkpoint {ckpt} vs model {model}"


def assign_state(model, state, source):
    """Set every model tensor from `state` (exact key set and shapes), casting to each tensor's
    dtype. Returns {(from_dtype, to_dtype): count} of the casts done."""
    import paddle
    targets = model.state_dict()
    missing = [k for k in targets if k not in state]
    unexpected = [k for k in state if k not in targets]
    if missing:
        raise ConfigError(f"{source}: checkpoint lacks {len(missing)} model arrays: "
                          f"{name_list(missing)}")
    if unexpected:
        raise ConfigError(f"{source}: checkpoint has {len(unexpected)} arrays the model lacks: "
                          f"{name_list(unexpected)}")
    bad = [_fmt_mismatch(k, _shape(state[k]), _shape(t)) for k, t in targets.items()
           if _shape(state[k]) != _shape(t)]
    if bad:
        raise ConfigError(f"{source}: shape mismatch: {name_list(bad, 8)}")
    casts = {}
    with paddle.no_grad():
        for k, t in targets.items():
            value = paddle.to_tensor(np.ascontiguousarray(state[k]))
            if value.dtype != t.dtype:
                key = (str(value.dtype).replace("paddle.", ""), str(t.dtype).replace("paddle.", ""))
                casts[key] = casts.get(key, 0) + 1
                value = value.astype(t.dtype)
            t.set_value(value)
            if _shape(t) != _shape(state[k]):  # belt and braces: set_value must not reshape
                raise ConfigError(f"{source}: could not assign {k}")
    return casts


def load_pretrained(model, path, finetune=False, pos_embed_interp="bilinear", log=print):
    """Load `path` into `model`; returns a report dict (what was loaded, dropped, resized, cast).

    Without `finetune` the checkpoint must match the model exactly. With `finetune`:
      * the classifier (`head`) is dropped when its shape differs, and the pre-logits layer
        (`head0`) when its shape differs or the model has none; whenever head0 is dropped or
        missing the head goes too, since its input changed meaning. Dropped layers keep the
        model's initialisation.
      * `pos_embed` is resized to the model's grid (`pos_embed_interp`: 'bilinear' = official,
        'bicubic' = PLSC/timm); the class-token row is kept.
    Anything else that differs is an error listing the keys and shapes.
    """
    if pos_embed_interp not in METHODS:
        raise ConfigError(f"pos_embed_interp must be one of {', '.join(METHODS)}, "
                          f"got {pos_embed_interp!r}")
    state = dict(read_checkpoint(path))
    model_shapes = {k: _shape(t) for k, t in model.state_dict().items()}
    report = {"path": path, "dropped": [], "kept_init": [], "resized": {}, "cast": {},
              "loaded": []}

    if finetune:
        head0_changed = False
        for layer in HEAD_LAYERS:
            ck, mk = _layer_keys(state, layer), _layer_keys(model_shapes, layer)
            differs = sorted(ck) != sorted(mk) or any(
                _shape(state[k]) != model_shapes[k] for k in ck)
            follows = layer == "head" and head0_changed
            if not (differs or follows):
                continue
            if layer == "head0":
                head0_changed = True
            if ck:
                why = ("the model has no such layer" if not mk else
                       "shape differs from the model" if differs else
                       "its input layer head0 changed")
                detail = ", ".join(f"{k} {_shape(state[k])}" for k in ck)
                log(f"pretrained: dropped {detail} ({why}; fine-tuning keeps the model's init)")
                report["dropped"] += ck
                for k in ck:
                    del state[k]
            if mk:
                report["kept_init"] += mk
                if not ck:
                    log(f"pretrained: {', '.join(mk)} not in the checkpoint: kept the model's init")
        for k in report["kept_init"]:
            state[k] = None  # placeholder: filled from the model below
        # A token checkpoint for a gap model (or vice versa) is not resized: the cls_token
        # key mismatch is reported below.
        prefix = 1 if "cls_token" in model_shapes else 0
        if "pos_embed" in state and "pos_embed" in model_shapes \
                and _shape(state["pos_embed"]) != model_shapes["pos_embed"] \
                and ("cls_token" in state) == bool(prefix):
            old = _shape(state["pos_embed"])
            grid = tuple(model.patch_embed.grid_size)
            try:
                state["pos_embed"] = resize_pos_embed(state["pos_embed"], grid, prefix,
                                                      pos_embed_interp)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
            new = _shape(state["pos_embed"])
            if new != model_shapes["pos_embed"]:
                raise ConfigError(f"{path}: pos_embed {old} resized to {new} but the model "
                                  f"has {model_shapes['pos_embed']}")
            g_old = int(round((old[1] - prefix) ** 0.5))
            log(f"pretrained: resized pos_embed {old} -> {new} (grid {g_old}x{g_old} -> "
                f"{grid[0]}x{grid[1]}, {pos_embed_interp})")
            report["resized"]["pos_embed"] = (old, new)
    else:
        bad = [k for k in state if k in model_shapes and _shape(state[k]) != model_shapes[k]]
        if bad and all(k == "pos_embed" or k.split(".")[0] in HEAD_LAYERS for k in bad):
            listed = name_list([_fmt_mismatch(k, _shape(state[k]), model_shapes[k])
                                for k in bad], 8)
            raise ConfigError(f"{path}: shape mismatch: {listed}; set Global.finetune=True to "
                              f"drop the head and resize pos_embed")

    if report["kept_init"]:
        current = model.state_dict()
        for k in report["kept_init"]:
            state[k] = current[k].numpy()
    report["cast"] = assign_state(model, state, path)
    report["loaded"] = [k for k in state if k not in report["kept_init"]]
    for (src, dst), n in report["cast"].items():
        log(f"pretrained: cast {n} arrays from {src} to {dst}")
    log(f"pretrained: loaded {len(report['loaded'])} arrays from {path}")
    return report
