"""The `Classifier` both kinds of model are (dygraph Layer or paddle.inference predictor), and
what runs on it: prediction (inference_model, postprocess) and features (extract_feat)."""
import numpy as np

from ..errors import ConfigError
from ..vit_spec import pool_tokens


class Classifier:
    """A model ready for prediction: a dygraph Layer (`kind == 'dygraph'`, `.model`) or a
    paddle.inference predictor (`kind == 'predictor'`), with its preprocessing and labels."""

    def __init__(self, kind, preprocess, class_names, topk, name, model=None, predictor=None,
                 cfg=None, source=None):
        self.kind = kind
        self.preprocess = preprocess
        self.class_names = class_names
        self.topk = topk
        self.name = name
        self.model = model
        self.predictor = predictor
        self.cfg = cfg
        self.source = source  # exported: the directory; dygraph: the weights it loaded

    @property
    def input_shape(self):
        return self.preprocess.input_shape

    def logits(self, batch):
        """[B, C, H, W] float32 -> logits [B, class_num] as a numpy array."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.kind == "dygraph":
            import paddle

            with paddle.no_grad():
                return self.model(paddle.to_tensor(batch)).numpy()
        p = self.predictor
        handle = p.get_input_handle(p.get_input_names()[0])
        handle.reshape(list(batch.shape))
        handle.copy_from_cpu(batch)
        p.run()
        return p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()

    def __repr__(self):
        return (f"Classifier({self.name}, {self.kind}, input {list(self.input_shape)}, "
                f"{len(self.class_names) if self.class_names else 'no'} class names)")


def softmax(logits):
    """Row softmax in float64 (scores are reported, so no float32 rounding)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def postprocess(logits, topk, class_names):
    """Logits [B, C] -> one result dict per row (see inference_model)."""
    probs = softmax(logits)
    k = max(1, min(int(topk), probs.shape[1]))
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]  # ties: lower label first, like argmax
        labels = [int(i) for i in order]
        classes = [class_names[i] if class_names and i < len(class_names) else None
                   for i in labels]
        out.append({"pred_label": labels[0], "pred_score": float(row[labels[0]]),
                    "pred_class": classes[0], "topk_labels": labels,
                    "topk_scores": [float(row[i]) for i in labels], "topk_classes": classes})
    return out


def as_list(image):
    """(list of images, whether a single image was given)."""
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image), False
    if isinstance(image, (list, tuple)):
        return list(image), False
    return [image], True


def inference_model(model, image, batch_size=16, topk=None):
    """Predict one image (path or HWC uint8 RGB array) -> dict, or a list of them -> list.

    Keys: pred_label (int), pred_score (softmax probability), pred_class (name or None),
    topk_labels, topk_scores, topk_classes (best first, k = topk or model.topk)."""
    images, single = as_list(image)
    topk = model.topk if topk is None else topk
    results = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([model.preprocess(im) for im in images[start:start + batch_size]])
        results += postprocess(model.logits(batch), topk, model.class_names)
    return results[0] if single else results


def require_dygraph(model, what):
    """The Layer of a dygraph Classifier; ConfigError for an exported one, whose graph
    computes logits only (no tokens, no attention)."""
    if getattr(model, "kind", None) != "dygraph":
        source = getattr(model, "source", None)
        made = f" ({source})" if source else ""
        raise ConfigError(f"{what} needs the dygraph model: the exported model{made} outputs "
                          f"logits only; use init_model(CONFIG, CHECKPOINT) with the config and "
                          f"weights it was exported from")
    return model.model


def pooled_feature(net, tokens):
    """What the head pools from the final normed tokens (paddle [B, N, D]) -> [B, D], before
    any representation layer: the model family's own pooling (plsc.vit_spec.pool_tokens)."""
    return pool_tokens(tokens, net.spec.global_pool)


def extract_feat(model, image):
    """Final normed tokens of forward_features, as numpy:
    patch_tokens [B, D, h, w] (the patch tokens on their grid) and cls_feature [B, D]
    (pooled_feature: the class token, or the mean of the patch tokens for gap models).
    Dygraph models only: an exported model outputs logits only."""
    import paddle

    net = require_dygraph(model, "extract_feat")
    images, _ = as_list(image)
    batch = np.stack([model.preprocess(im) for im in images])
    with paddle.no_grad():
        tokens = net.forward_features(paddle.to_tensor(batch))
        pooled = pooled_feature(net, tokens).numpy()
    tokens = tokens.numpy()
    gh, gw = net.patch_embed.grid_size
    patches = tokens[:, int(net.num_prefix_tokens):]
    grid = patches.reshape(len(tokens), gh, gw, -1).transpose(0, 3, 1, 2)
    return {"patch_tokens": np.ascontiguousarray(grid), "cls_feature": pooled}
