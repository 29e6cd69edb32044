"""Weights-only unpickling: a pickle interpreter that can build data and nothing else.

`pickle.load` imports and calls whatever a file names, so a downloaded .pdparams could run
`os.system`. This reader interprets the opcodes itself and admits only what paddle.save and plsc
write: dicts, lists, tuples, None/bool/int/float, str/bytes, numpy arrays of numeric dtypes and
numpy scalars. The few globals such files reference are not imported; each maps to a checking
function of ours (allowlist.py):

    numpy.ndarray, numpy.dtype                      markers (never called)
    numpy[._]core.multiarray._reconstruct           an empty placeholder, filled by BUILD
    numpy[._]core.multiarray.scalar                 a numpy scalar from its bytes
    builtins.tuple                                  only paddle's tensor form tuple(((name, arr),))
    _codecs.encode, builtins.bytes                  only (str, 'latin1') and (): protocol 2 bytes
    collections.OrderedDict                         only with no arguments (a dict)

Anything else is refused before anything runs, naming the object. Resources are bounded: every
length is checked against the bytes left in the file before it is read, an array must hold
exactly the bytes its shape and dtype declare (nothing is allocated from a declared shape), and
at most MAX_OPS opcodes run (each creates at most one object), so memory stays within a small
multiple of the file size plus ~100 MB and time within about a second.
"""
import io
import os
import struct

from ..errors import DataError
from .allowlist import (_ALLOWED, _Marker, _Pending, _Refused, _build_array, _build_dtype,
                        _check_plain, _paddle_layout)

# Legitimate files need far fewer: a ViT-H optimizer state ~1e5, CIFAR-100's train batch ~2e5.
MAX_OPS = 1_000_000


class _Machine:
    """The pickle virtual machine, restricted to the opcodes data files use (protocols 2-5)."""

    def __init__(self, f, size, label, encoding):
        self.f, self.left, self.label, self.encoding = f, size, label, encoding
        self.stack, self.marks, self.memo = [], [], {}

    def read(self, n):
        if n < 0 or n > self.left:
            raise _Refused(f"declares {n} bytes at byte {self.pos()} but only {self.left} remain")
        data = self.f.read(n)
        if len(data) != n:
            raise _Refused("the file ended early")
        self.left -= n
        return data

    def pos(self):
        return self.f.tell()

    def unpack(self, fmt):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def line(self):
        data = self.f.readline(min(257, self.left))
        if not data.endswith(b"\n"):
            raise _Refused("unterminated GLOBAL name")
        self.left -= len(data)
        return data[:-1].decode("utf-8")

    def pop_mark(self):
        i = self.marks.pop()
        items = self.stack[i:]
        del self.stack[i:]
        return items

    def run(self):
        for _ in range(MAX_OPS):
            op = self.read(1)
            handler = _OPS.get(op)
            if handler is None:
                raise _Refused(f"opcode {op!r} at byte {self.pos() - 1} is not allowed in a "
                               f"weights file")
            if handler(self) is _STOP:
                return self.stack.pop()
        raise _Refused(f"more than {MAX_OPS:,} pickle operations (a weights file needs far "
                       f"fewer); refusing to build it")

    # ----------------------------------------------------------------- opcodes with logic
    def find(self, module, name):
        marker = _ALLOWED.get((module, name))
        if marker is None:
            raise _Refused(f"refusing to load: it references {module}.{name}, which a weights "
                           f"file never contains (allowed: numpy arrays, dicts, lists, tuples, "
                           f"numbers, strings)")
        self.stack.append(marker)

    def reduce(self):
        args = self.stack.pop()
        fn = self.stack.pop()
        if not isinstance(fn, _Marker) or fn.call is None or type(args) is not tuple:
            raise _Refused("REDUCE of something that is not an allowed function")
        self.stack.append(fn.call(args))

    def build(self):
        state = self.stack.pop()
        obj = self.stack[-1]
        if not isinstance(obj, _Pending) or obj.kind == "done":
            raise _Refused("BUILD of something that is not a numpy array or dtype")
        value = _build_dtype(obj, state) if obj.kind == "dtype" else _build_array(state)
        self.stack[-1] = value
        for slot in obj.slots:
            self.memo[slot] = value
        obj.kind = "done"

    def put(self, index):
        value = self.stack[-1]
        if isinstance(value, _Pending):
            value.slots.append(index)
        self.memo[index] = value

    def append(self, items):
        target = self.stack[-1]
        if type(target) is not list:
            raise _Refused("APPEND to something that is not a list")
        target.extend(items)

    def setitems(self, items):
        target = self.stack[-1]
        if type(target) is not dict or len(items) % 2:
            raise _Refused("SETITEM on something that is not a dict")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def dict_from_mark(self):
        items = self.pop_mark()
        self.stack.append({})
        self.setitems(items)

    def text(self, data):
        if self.encoding == "bytes":
            return data
        return data.decode(self.encoding)


_STOP = object()


def _opcodes():
    m, push = _Machine, lambda f: (lambda vm: vm.stack.append(f(vm)))
    return {
        b"\x80": lambda vm: None if 2 <= vm.unpack("<B") <= 5 else _fail("unsupported protocol"),
        b"\x95": lambda vm: vm.unpack("<Q") and None,  # FRAME: a length hint only
        b".": lambda vm: _STOP,
        b"(": lambda vm: vm.marks.append(len(vm.stack)),
        b"0": lambda vm: vm.stack.pop() and None,
        b"1": lambda vm: vm.pop_mark() and None,
        b"N": push(lambda vm: None),
        b"\x88": push(lambda vm: True),
        b"\x89": push(lambda vm: False),
        b"J": push(lambda vm: vm.unpack("<i")),
        b"K": push(lambda vm: vm.unpack("<B")),
        b"M": push(lambda vm: vm.unpack("<H")),
        b"\x8a": push(lambda vm: int.from_bytes(vm.read(vm.unpack("<B")), "little", signed=True)),
        b"G": push(lambda vm: vm.unpack(">d")),
        b"X": push(lambda vm: vm.read(vm.unpack("<I")).decode("utf-8", "surrogatepass")),
        b"\x8c": push(lambda vm: vm.read(vm.unpack("<B")).decode("utf-8", "surrogatepass")),
        b"\x8d": push(lambda vm: vm.read(vm.unpack("<Q")).decode("utf-8", "surrogatepass")),
        b"B": push(lambda vm: vm.read(vm.unpack("<I"))),
        b"C": push(lambda vm: vm.read(vm.unpack("<B"))),
        b"\x8e": push(lambda vm: vm.read(vm.unpack("<Q"))),
        b"T": push(lambda vm: vm.text(vm.read(vm.unpack("<i")))),
        b"U": push(lambda vm: vm.text(vm.read(vm.unpack("<B")))),
        b"}": push(lambda vm: {}),
        b"]": push(lambda vm: []),
        b")": push(lambda vm: ()),
        b"t": push(lambda vm: tuple(vm.pop_mark())),
        b"\x85": push(lambda vm: (vm.stack.pop(),)),
        b"\x86": push(lambda vm: tuple(_popn(vm, 2))),
        b"\x87": push(lambda vm: tuple(_popn(vm, 3))),
        b"l": push(lambda vm: vm.pop_mark()),
        b"d": lambda vm: vm.dict_from_mark(),
        b"a": lambda vm: vm.append([vm.stack.pop()]),
        b"e": lambda vm: vm.append(vm.pop_mark()),
        b"s": lambda vm: vm.setitems(_popn(vm, 2)),
        b"u": lambda vm: vm.setitems(vm.pop_mark()),
        b"q": lambda vm: vm.put(vm.unpack("<B")),
        b"r": lambda vm: vm.put(vm.unpack("<I")),
        b"\x94": lambda vm: vm.put(len(vm.memo)),
        b"h": push(lambda vm: vm.memo[vm.unpack("<B")]),
        b"j": push(lambda vm: vm.memo[vm.unpack("<I")]),
        b"c": lambda vm: vm.find(vm.line(), vm.line()),
        b"\x93": lambda vm: vm.find(*_popn(vm, 2)) if all(
            isinstance(s, str) for s in vm.stack[-2:]) else _fail("STACK_GLOBAL of non-strings"),
        b"R": m.reduce,
        b"b": m.build,
    }


def _popn(vm, n):
    if len(vm.stack) - (vm.marks[-1] if vm.marks else 0) < n:
        raise _Refused("stack underflow")
    items = vm.stack[-n:]
    del vm.stack[-n:]
    return items


def _fail(why):
    raise _Refused(why)


_OPS = _opcodes()


# --------------------------------------------------------------------------------- public
def load_pickle(path, source=None):
    """The object a paddle.save / plsc pickle file holds, built without running any code.

    Returns what `paddle.load(path, return_numpy=True)` returns for such files: dicts, lists,
    tuples, numbers, strings and numpy arrays (read-only views of the file's bytes), with
    paddle's tensor form `(name, array)` turned into the array, big tensors split by protocol
    2/3 saves joined back, and the `StructuredToParameterName@@` table dropped. A .pdopt written
    by paddle.save of {"optimizer": opt.state_dict(), "lr_scheduler": ..., "scaler": ...} comes
    back with the same nesting (master_weights and LR_Scheduler dicts included) and numpy arrays
    where paddle.load gives Tensors; `Optimizer.set_state_dict` accepts them.

    Anything else - a global outside the allow-list, a malformed or truncated stream, an array
    whose bytes do not match its shape, too many operations - is a one-line DataError naming
    `source` (e.g. "Global.pretrained_model") and the file, raised before anything is built
    from the offending part.
    """
    label = f"{source}: {path}" if source else str(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{label}: file not found") from None
    except OSError as e:
        raise DataError(f"{label}: cannot read ({e.strerror or type(e).__name__})") from None
    with f:
        return _load(f, os.fstat(f.fileno()).st_size, label, "latin1")


def loads_pickle(data, label, encoding="latin1"):
    """`load_pickle` for bytes in memory (e.g. a member of a tar archive). `encoding` applies to
    Python 2 `str` values: 'latin1' as paddle.load does, or 'bytes' (the CIFAR batches)."""
    return _load(io.BytesIO(data), len(data), label, encoding)


def _load(f, size, label, encoding):
    try:
        obj = _Machine(f, size, label, encoding).run()
        _check_plain(obj)
        return _paddle_layout(obj) if type(obj) is dict else obj
    except _Refused as e:
        raise DataError(f"{label}: {e}") from None
    except DataError:
        raise
    except Exception as e:  # malformed streams fail in many ways (IndexError, KeyError, ...)
        raise DataError(f"{label}: not a readable weights pickle (corrupt at byte "
                        f"{f.tell()}: {type(e).__name__})") from None
