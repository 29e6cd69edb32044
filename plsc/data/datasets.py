"""Datasets: ImageNet-style list files, class-per-folder trees, and the CIFAR python archives.

`dataset[(index, seed)]` returns `(image, label)` with the random transforms drawing from
`np.random.default_rng(seed)` (the sampler derives seed from (global seed, epoch, index)); a plain
int index uses fresh OS entropy. Labels are int64 scalars, or float32 multi-hot [class_num] for
multi-label lists. Every user-facing problem is a one-line DataError naming the file (and line).
"""
import logging
import lzma
import multiprocessing
import operator
import os
import stat
import tarfile
import zlib
from typing import Literal, Optional

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from ..weights import loads_pickle
from .transforms import ImageDecodeError, apply_operators, create_operators

logger = logging.getLogger("plsc")

# The longest list-file line read (a path is at most 4096 bytes on Linux; multi-label lines of a
# 21k-class set stay far below): a damaged file with no newline is refused, not read whole.
MAX_LIST_LINE = 1 << 20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def build_ops(transform_ops):
    """Config form ([{Name: {args}}, ...]) or already built callables."""
    if transform_ops and all(callable(op) for op in transform_ops):
        return list(transform_ops)
    return create_operators(transform_ops)


def split_key(key):
    """(index, seed) or a plain index -> (index, seed or None)."""
    if isinstance(key, tuple):
        index, seed = key
        return operator.index(index), seed
    return operator.index(key), None


class BaseDataset:
    """Map-style dataset; subclasses implement `__len__` and `load(index, rng)`."""

    class_names = None  # list of names when the dataset knows them
    class_num = None

    def __init__(self, transform_ops=None):
        self.ops = build_ops(transform_ops)

    def __getitem__(self, key):
        index, seed = split_key(key)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return self.load(index % n, seed)


class FileImageDataset(BaseDataset):
    """Images read from files listed in `self.samples` [(path, label)], decoded by DecodeImage.

    With skip_bad_images, an unreadable or undecodable file is replaced by the next index's
    sample (deterministic) and counted in `skipped` (shared with DataLoader workers)."""

    def __init__(self, transform_ops=None, skip_bad_images=False):
        super().__init__(transform_ops)
        self.skip_bad_images = skip_bad_images
        self.samples = []
        # A process-shared counter, inherited by DataLoader workers, so the main process sees
        # how many images the workers skipped.
        self._skipped = multiprocessing.Value("q", 0)

    @property
    def skipped(self):
        return self._skipped.value

    def __len__(self):
        return len(self.samples)

    def label(self, index):
        return np.int64(self.samples[index][1])

    def load(self, index, seed):
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            path = self.samples[i][0]
            try:
                # never read a device or FIFO listed by mistake (/dev/zero would never end)
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise IsADirectoryError(0, "not a regular file")
                with open(path, "rb") as f:
                    data = f.read()
                # A fresh generator per attempt: a replacement sample gets the same randomness
                # whichever attempt it is.
                img = apply_operators(self.ops, data, np.random.default_rng(seed))
            except ImageDecodeError as e:
                problem = f"cannot decode image {path}" + (f": {e.reason}" if e.reason else "")
            except OSError as e:
                problem = f"cannot read image {path}: {e.strerror or e}"
            else:
                return img, self.label(i)
            if not self.skip_bad_images:
                raise DataError(problem + " (set skip_bad_images: True to skip bad files)")
            with self._skipped.get_lock():
                self._skipped.value += 1
            logger.warning("%s; using the next image instead (skip_bad_images)", problem)
        raise DataError("no readable image in the dataset (every file failed to decode)")

    def __getstate__(self):
        state = self.__dict__.copy()
        # Only process creation may share the counter (spawned DataLoader workers); any other
        # pickle (deepcopy, saving) gets a private snapshot instead of an error.
        if multiprocessing.context.get_spawning_popen() is None:
            state["_skipped"] = self._skipped.value
        return state

    def __setstate__(self, state):
        count = state["_skipped"]
        if isinstance(count, int):
            state["_skipped"] = multiprocessing.Value("q", count)
        self.__dict__.update(state)


def _check_exist(samples, list_path):
    """Every listed file exists: one listdir per directory (fast even for ImageNet's 1.28M)."""
    listing = {}
    missing = []
    for path, _ in samples:
        d, name = os.path.split(path)
        if d not in listing:
            try:
                listing[d] = set(os.listdir(d or "."))
            except OSError:
                listing[d] = set()
        if name not in listing[d]:
            missing.append(path)
    if missing:
        raise DataError(f"image file not found: {missing[0]} ({len(missing)} of {len(samples)} files "
                        f"listed in {list_path} are missing)")


def _multi_label_needs_class_num(values):
    if values["multi_label"] and values["class_num"] is None:
        return "multi_label: True needs class_num"
    return None


@DATASETS.register(check=_multi_label_needs_class_num)
class ImageNetDataset(FileImageDataset):
    """PLSC's list-file dataset: one `relative/path label` per line (`path l1,l2,...` when
    multi_label, giving a multi-hot float32 vector of length class_num)."""

    def __init__(self, image_root: str, cls_label_path: str, transform_ops: Optional[list] = None,
                 multi_label: bool = False, class_num: Optional[int] = None,
                 delimiter: Optional[str] = None, skip_bad_images: bool = False,
                 check_files: bool = True):
        super().__init__(transform_ops, skip_bad_images)
        if not os.path.isdir(image_root):
            raise DataError(f"image_root '{image_root}' is not a directory")
        if not os.path.isfile(cls_label_path):
            raise DataError(f"cls_label_path '{cls_label_path}' does not exist")
        self.image_root = image_root
        self.cls_label_path = cls_label_path
        self.multi_label = multi_label
        self.class_num = class_num
        self.samples = self._parse(cls_label_path, delimiter)
        if not self.samples:
            raise DataError(f"{cls_label_path} lists no images")
        if check_files:
            _check_exist(self.samples, cls_label_path)

    def _parse(self, list_path, delimiter):
        expected = "<relative/image/path> " + ("<l1,l2,...>" if self.multi_label else "<label>")
        samples = []
        lineno = 0
        with open(list_path, "rb") as f:  # bytes: a decoding error names its own line
            for raw in iter(lambda: f.readline(MAX_LIST_LINE + 1), b""):
                if len(raw) > MAX_LIST_LINE:
                    raise DataError(f"{list_path}:{lineno + 1}: line longer than {MAX_LIST_LINE} "
                                    f"bytes; expected '{expected}'")
                if lineno == 0 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                    raw = raw[3:]
                try:
                    chunk = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{list_path}:{lineno + 1}: not UTF-8 text ({e.reason} at "
                                    f"byte {e.start}); expected '{expected}'") from None
                if chunk.endswith("\n"):
                    chunk = chunk[:-2] if chunk.endswith("\r\n") else chunk[:-1]
                for line in chunk.split("\r"):  # old Mac line ends, as text mode read them
                    lineno += 1
                    self._parse_line(line, lineno, list_path, delimiter, expected, samples)
        return samples

    def _parse_line(self, line, lineno, list_path, delimiter, expected, samples):
        text = line.strip()
        if not text:
            return
        parts = [p.strip() for p in text.rsplit(delimiter, 1)]
        try:
            if len(parts) != 2 or not parts[0] or "\0" in parts[0]:
                raise ValueError
            labels = [int(v) for v in parts[1].split(",")] if self.multi_label else [int(parts[1])]
        except ValueError:
            raise DataError(f"{list_path}:{lineno}: malformed line {_short(text)}; expected "
                            f"'{expected}'") from None
        for v in labels:
            if self.class_num is not None and not 0 <= v < self.class_num:
                raise DataError(f"{list_path}:{lineno}: label {_short(v)} is outside "
                                f"[0, class_num={self.class_num})")
            if v < 0:
                raise DataError(f"{list_path}:{lineno}: label {_short(v)} is negative")
            if v >= 1 << 63:  # labels are int64 tensors
                raise DataError(f"{list_path}:{lineno}: label {_short(v)} is too large for int64")
        if len(parts[0]) > 4096:  # Linux's PATH_MAX: open() would fail, and the message be huge
            raise DataError(f"{list_path}:{lineno}: image path {_short(parts[0])} is longer than "
                            f"4096 characters")
        label = labels if self.multi_label else labels[0]
        samples.append((os.path.join(self.image_root, parts[0]), label))

    def label(self, index):
        label = self.samples[index][1]
        if self.multi_label:
            hot = np.zeros([self.class_num], dtype=np.float32)
            hot[label] = 1.0
            return hot
        return np.int64(label)


def _short(value, limit=80, quote=True):
    """repr of a string (str of anything else, or of a string when not quote), cut to `limit`
    characters for a message."""
    text = repr(value) if isinstance(value, str) and quote else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@DATASETS.register()
class ImageFolder(FileImageDataset):
    """`root/<class>/.../<image>`: one class per sub-directory, classes in sorted order."""

    def __init__(self, root: str, transform_ops: Optional[list] = None,
                 extensions: Optional[list] = None, skip_bad_images: bool = False):
        super().__init__(transform_ops, skip_bad_images)
        if not os.path.isdir(root):
            raise DataError(f"ImageFolder root '{root}' is not a directory")
        exts = tuple(e.lower() for e in (extensions or IMAGE_EXTENSIONS))
        self.root = root
        self.class_names = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.class_names:
            raise DataError(f"ImageFolder root '{root}' has no class sub-directories")
        self.class_num = len(self.class_names)
        for label, name in enumerate(self.class_names):
            for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
                dirnames.sort()
                self.samples += [(os.path.join(dirpath, f), label) for f in sorted(filenames)
                                 if f.lower().endswith(exts)]
        if not self.samples:
            raise DataError(f"ImageFolder root '{root}' has no images ({', '.join(exts)})")


class _CIFAR(BaseDataset):
    """The python-version CIFAR archive, read in memory; images HWC uint8 RGB."""

    # (archive member basenames per mode, label key, meta member, class-name key)
    FILES = {}
    LABEL_KEY = b""
    META = ("", b"")
    TITLE = ""

    # `mode` is PLSC's key name for the split.
    def __init__(self, data_file: str, mode: Literal["train", "test"] = "train",
                 transform_ops: Optional[list] = None):
        super().__init__(transform_ops)
        if not os.path.exists(data_file):
            raise DataError(f"{self.TITLE} file '{data_file}' does not exist (plsc never downloads: "
                            f"get the python version archive yourself)")
        self.data_file = data_file
        self.mode = mode
        wanted = self.FILES[mode] + [self.META[0]]
        members = _read_members(data_file, wanted, self.TITLE)
        images, labels = [], []
        for name in self.FILES[mode]:
            if name not in members:
                raise DataError(f"{data_file}: no '{name}' inside; expected the python version "
                                f"of {self.TITLE}")
            batch = _unpickle(members[name], data_file, name)
            try:
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[self.LABEL_KEY], dtype=np.int64))
            except (KeyError, ValueError, TypeError, OverflowError) as e:  # also: not a dict
                raise DataError(f"{data_file}: '{name}' is not a {self.TITLE} batch "
                                f"({_short(str(e), 200, quote=False)})") from None
        self.images = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))
        self.labels = np.concatenate(labels)
        if len(self.images) != len(self.labels):
            raise DataError(f"{data_file}: {len(self.images)} images but {len(self.labels)} labels")
        if self.META[0] in members:
            meta = _unpickle(members[self.META[0]], data_file, self.META[0])
            names = meta.get(self.META[1]) if isinstance(meta, dict) else None
            if isinstance(names, (list, tuple)):
                self.class_names = [n.decode(errors="replace") if isinstance(n, bytes) else str(n)
                                    for n in names]

    def __len__(self):
        return len(self.labels)

    def load(self, index, seed):
        img = apply_operators(self.ops, self.images[index], np.random.default_rng(seed))
        return img, self.labels[index]


def _read_members(data_file, names, title):
    """{basename: bytes} for the wanted basenames, from a tar(.gz) or an extracted directory."""
    found = {}
    if os.path.isdir(data_file):
        for dirpath, _, filenames in os.walk(data_file):
            for f in filenames:
                if f in names and f not in found:
                    with open(os.path.join(dirpath, f), "rb") as fh:
                        found[f] = fh.read()
        return found
    try:
        with tarfile.open(data_file, "r:*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in names and base not in found:
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        # tarfile's "r:*" joins one line per compression it tried: say it in one line
        reason = ("not a tar archive (plain, gz, bz2 or xz)"
                  if "could not be opened successfully" in str(e) else " ".join(str(e).split()))
        raise DataError(f"{data_file}: cannot read the {title} archive ({_short(reason, 200, quote=False)})") \
            from None
    return found


def _unpickle(data, data_file, name):
    # The official CIFAR format is a (Python 2) pickle: read weights-only, so a crafted archive
    # can hold nothing but dicts, lists, bytes, numbers and numpy arrays - and run nothing.
    batch = loads_pickle(data, f"{data_file}: '{name}'", encoding="bytes")
    if type(batch) is not dict:
        raise DataError(f"{data_file}: '{name}' is not a dict; expected the python version "
                        f"of CIFAR")
    return batch


@DATASETS.register()
class CIFAR10(_CIFAR):
    FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    LABEL_KEY = b"labels"
    META = ("batches.meta", b"label_names")
    TITLE = "CIFAR-10"
    class_num = 10


@DATASETS.register()
class CIFAR100(_CIFAR):
    FILES = {"train": ["train"], "test": ["test"]}
    LABEL_KEY = b"fine_labels"
    META = ("meta", b"fine_label_names")
    TITLE = "CIFAR-100"
    class_num = 100


@DATASETS.register()
class SyntheticShapes(ImageNetDataset):
    """A generated shapes dataset (plsc/data/synthetic.py): written to `root` on first use as
    JPEGs + list files, then read exactly like ImageNetDataset."""

    def __init__(self, root: str, split: Literal["train", "val"] = "train", class_num: int = 6,
                 num_train: int = 3000, num_val: int = 600, image_size: int = 32, seed: int = 0,
                 transform_ops: Optional[list] = None):
        from .synthetic import ensure_generated  # generator code only when used

        ensure_generated(root, class_num, num_train, num_val, image_size, seed)
        super().__init__(image_root=root, cls_label_path=os.path.join(root, f"{split}_list.txt"),
                         transform_ops=transform_ops, class_num=class_num)
        self.split = split
        with open(os.path.join(root, "labels.txt")) as f:
            self.class_names = [line.strip() for line in f if line.strip()]
