"""Loading pretrained weights into a model: `Global.pretrained_model` (+ `Global.finetune`).

Accepted sources: a `.pdparams` file (ours or PLSC's, given by prefix or full name; PLSC's O2
checkpoints hold fp16 tensors), an official `.npz` (converted on the fly) or a timm
`.safetensors` file (converted on the fly).

Files are read by plsc.weights.read_state (weights-only, format told by content) and loaded by
its strict `assign`.
"""
from ..errors import ConfigError
from ..models.pos_embed import METHODS, resize_pos_embed
from ..weights import assign, read_state
from ..weights.assign import mismatch, name_list, shape_of as _shape

def _layer_keys(keys, layer):
    return [k for k in keys if k.split(".")[0] == layer]


def load_pretrained(model, path, finetune=False, pos_embed_interp="bilinear", log=print,
                    source=None):
    """Load `path` into `model`; returns a report dict (what was loaded, dropped, resized, cast).

    Without `finetune` the checkpoint must match the model exactly. With `finetune`:
      * the classifier (`head`) is dropped when its shape differs, and the pre-logits layer
        (`head0`) when its shape differs or the model has none; whenever head0 is dropped or
        missing the head goes too, since its input changed meaning. Dropped layers keep the
        model's initialisation.
      * `pos_embed` is resized to the model's grid (`pos_embed_interp`: 'bilinear' = official,
        'bicubic' = PLSC/timm); the class-token row is kept.
    Anything else that differs is an error listing the keys and shapes. Errors start with
    `source` (e.g. "Global.pretrained_model") when given, then the path.
    """
    if pos_embed_interp not in METHODS:
        raise ConfigError(f"pos_embed_interp must be one of {', '.join(METHODS)}, "
                          f"got {pos_embed_interp!r}")
    state = dict(read_state(path, source))
    where = f"{source}: {path}" if source else path
    model_shapes = {k: _shape(t) for k, t in model.state_dict().items()}
    report = {"path": path, "dropped": [], "kept_init": [], "resized": {}, "cast": {},
              "loaded": []}

    if finetune:
        _drop_changed_heads(model, state, model_shapes, report, log)
        for k in report["kept_init"]:
            state[k] = None  # placeholder: filled from the model below
        _resize_pos_embed(model, state, model_shapes, report, where, pos_embed_interp, log)
    else:
        bad = [k for k in state if k in model_shapes and _shape(state[k]) != model_shapes[k]]
        if bad and all(k == "pos_embed" or k.split(".")[0] in model.head_names() for k in bad):
            listed = name_list([mismatch(k, _shape(state[k]), model_shapes[k])
                                for k in bad], 8)
            raise ConfigError(f"{where}: shape mismatch: {listed}; set Global.finetune=True to "
                              f"drop the head and resize pos_embed")

    if report["kept_init"]:
        current = model.state_dict()
        for k in report["kept_init"]:
            state[k] = current[k].numpy()
    report["cast"] = assign(model, state, where)
    report["loaded"] = [k for k in state if k not in report["kept_init"]]
    for (src, dst), n in report["cast"].items():
        log(f"pretrained: cast {n} arrays from {src} to {dst}")
    log(f"pretrained: loaded {len(report['loaded'])} arrays from {path}")
    return report


def _drop_changed_heads(model, state, model_shapes, report, log):
    """Fine-tuning: drop checkpoint head layers whose shape differs (see load_pretrained)."""
    head0_changed = False
    for layer in model.head_names():  # pre-logits first: dropping it drops the head
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


def _resize_pos_embed(model, state, model_shapes, report, where, pos_embed_interp, log):
    """Fine-tuning: resize the checkpoint's pos_embed to the model's grid."""
    # A token checkpoint for a gap model (or vice versa) is not resized: the cls_token
    # key mismatch is reported by assign.
    prefix = model.spec.num_prefix_tokens
    if "pos_embed" in state and "pos_embed" in model_shapes \
            and _shape(state["pos_embed"]) != model_shapes["pos_embed"] \
            and ("cls_token" in state) == bool(prefix):
        old = _shape(state["pos_embed"])
        grid = tuple(model.patch_embed.grid_size)
        try:
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], grid, prefix,
                                                  pos_embed_interp)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        new = _shape(state["pos_embed"])
        if new != model_shapes["pos_embed"]:
            raise ConfigError(f"{where}: pos_embed {old} resized to {new} but the model "
                              f"has {model_shapes['pos_embed']}")
        g_old = int(round((old[1] - prefix) ** 0.5))
        log(f"pretrained: resized pos_embed {old} -> {new} (grid {g_old}x{g_old} -> "
            f"{grid[0]}x{grid[1]}, {pos_embed_interp})")
        report["resized"]["pos_embed"] = (old, new)
