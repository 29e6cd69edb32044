"""Issue 11: bad files get one line, never a traceback, a hang or a huge allocation.

Seeded fuzzing of every non-weight reader - YAML configs (with `_base_`), ImageNet list files,
encoded images (with and without skip_bad_images), CIFAR archives - with truncated, bit-flipped,
spliced and random files plus hand-made hostile ones (10,000-level nesting, alias bombs, `_base_`
cycles and include diamonds, decompression-bomb image headers, /dev/zero). Every case must end
in success or a one-line PlscError, within CASE_SECONDS and with a bounded peak-RSS growth;
failures are collected and reported together with the case name (reproducible from the seed).
A few cases go through tools/train.py to check the CLI contract: exit 2 and one `error:` line.
"""
import contextlib
import io
import os
import pickle
import shutil
import signal
import struct
import tarfile
import time
import zlib

import cv2
import numpy as np
import pytest
import yaml

from plsc.config import get_config
from plsc.data import CIFAR10, ImageNetDataset
from plsc.errors import PlscError

from tiny import ROOT, run_tool, tiny_config

SEED = 11
CASE_SECONDS = 10.0  # generous for a shared 2-core machine; a case normally takes milliseconds
HANG_SECONDS = 30  # SIGALRM turns a hang into a reported failure instead of a stuck suite
RSS_GROWTH_MB = 200  # peak RSS growth allowed per case (a 30000x30000 JPEG header cost 5 GB)
MAX_MESSAGE = 5000  # characters of an error line (paths may be long; megabytes are a bug)


# ----------------------------------------------------------------------------- the contract

class _Hang(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) so each case measures its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Contract:
    """Runs cases; collects every violation as 'case: problem'."""

    def __init__(self):
        self.failures = []
        self.counts = {}  # group -> {"ok": n, "error": n}: each reader both accepts and refuses

    @contextlib.contextmanager
    def _timer(self):
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def run(self, name, fn):
        """fn() may return anything or raise a PlscError; returns 'ok' or the error text."""
        tally = self.counts.setdefault(name.split(":")[0], {"ok": 0, "error": 0})
        exact = _reset_peak_rss()
        base = _status_kb("VmRSS") if exact else _status_kb("VmHWM")
        start = time.perf_counter()
        outcome = "ok"
        try:
            with self._timer():
                fn()
        except _Hang:
            self.failures.append(f"{name}: still running after {HANG_SECONDS} s")
            return "hang"
        except PlscError as e:
            outcome = str(e)
            if not outcome or "\n" in outcome or len(outcome) > MAX_MESSAGE:
                self.failures.append(f"{name}: not one short line: {outcome[:300]!r}")
            if "Traceback" in outcome:
                self.failures.append(f"{name}: a traceback in the message")
        except Exception as e:  # noqa: BLE001 - exactly what the fuzz looks for
            self.failures.append(f"{name}: {type(e).__name__} escaped: {str(e)[:200]}")
            return "escaped"
        elapsed = time.perf_counter() - start
        if elapsed > CASE_SECONDS:
            self.failures.append(f"{name}: took {elapsed:.1f} s")
        grown = (_status_kb("VmHWM") - base) / 1024
        if grown > RSS_GROWTH_MB:
            self.failures.append(f"{name}: peak RSS grew by {grown:.0f} MB")
        tally["ok" if outcome == "ok" else "error"] += 1
        return outcome

    def check(self, *mixed):
        """No violations, and each group in `mixed` had cases that loaded and cases that were
        refused (a fuzz that never reaches the reader, or never damages it, passes vacuously)."""
        for group in mixed:
            tally = self.counts.get(group, {"ok": 0, "error": 0})
            if not tally["ok"] or not tally["error"]:
                self.failures.append(f"{group}: {tally} - expected both outcomes")
        assert not self.failures, f"{len(self.failures)} bad case(s):\n" + "\n".join(self.failures)


def test_the_contract_catches_what_it_guards():
    """The harness itself: an escaping exception, a two-line message, a slow case and a big
    allocation are each reported."""
    c = Contract()
    assert c.run("escape", lambda: int("x")) == "escaped"
    c.run("lines", lambda: (_ for _ in ()).throw(PlscError("a\nb")))
    c.run("big", lambda: np.ones(400 << 20, np.uint8).sum())
    assert len(c.failures) == 3, c.failures
    assert "ValueError escaped" in c.failures[0] and "not one short line" in c.failures[1]
    assert "peak RSS grew" in c.failures[2]
    c = Contract()
    old = globals()["HANG_SECONDS"]
    globals()["HANG_SECONDS"] = 1
    try:
        assert c.run("hang", lambda: time.sleep(5)) == "hang"
    finally:
        globals()["HANG_SECONDS"] = old
    assert c.failures == ["hang: still running after 1 s"]


# ----------------------------------------------------------------------------- mutations

PRINTABLE = np.frombuffer(b"".join(bytes([i]) for i in range(32, 127)) + b"\n\n\n\t", np.uint8)
YAML_BITS = [b"&a ", b"*a", b"<<: *a", b"!!int ", b"!!python/object:os.system ", b"{", b"}", b"[",
             b"]", b": ", b"- ", b"_base_: ", b"\n  ", b"\t", b"'", b'"', b"%YAML 1.1\n", b"---\n",
             b"? ", b"|\n", b"\xff", b"\x00", b"9" * 5000, b"(" * 300, b"_delete_: true"]


def mutate(data, rng, tokens=()):
    """One random damage to `data`: truncate, flip bits, overwrite/insert/delete bytes,
    duplicate a chunk, or splice in a token."""
    data = bytearray(data)
    kind = int(rng.integers(7 if tokens else 6))
    n = len(data)
    if kind == 0 or n < 2:
        return bytes(data[:int(rng.integers(0, max(n, 1)))]), "truncated"
    if kind == 1:
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
        return bytes(data), "bit-flipped"
    if kind == 2:
        at = int(rng.integers(n))
        size = int(rng.integers(1, 17))
        data[at:at + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        return bytes(data), "overwritten"
    if kind == 3:
        at = int(rng.integers(n))
        data[at:at] = rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes()
        return bytes(data), "inserted"
    if kind == 4:
        at = int(rng.integers(n))
        del data[at:at + int(rng.integers(1, 65))]
        return bytes(data), "deleted"
    if kind == 5:
        a, b = sorted(int(v) for v in rng.integers(0, n, 2))
        at = int(rng.integers(n))
        data[at:at] = data[a:b + 1] * int(rng.integers(1, 4))
        return bytes(data), "duplicated"
    at = int(rng.integers(n))
    data[at:at] = tokens[int(rng.integers(len(tokens)))]
    return bytes(data), "spliced"


def random_bytes(rng, n):
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def random_text(rng, n):
    return rng.choice(PRINTABLE, n).tobytes()


# ----------------------------------------------------------------------------- YAML configs

def _alias_bomb(levels=10, width=9, key="a"):
    lines = [f'l0: &l0 ["{key}", "{key}", "{key}", "{key}", "{key}", "{key}", "{key}", "{key}", '
             f'"{key}"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _map_bomb(levels=10):
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(8)) + "}")
    return "\n".join(lines) + "\n"


def hostile_configs(d):
    """name -> (file to load, files to write {relative path: bytes or str})."""
    deep_block = "".join("  " * i + "a:\n" for i in range(150)) + "  " * 150 + "b: 1\n"
    diamond = {f"d{i}.yaml": "_base_: [" + ", ".join([f"d{i - 1}.yaml"] * 4) + "]\n"
               for i in range(1, 12)}
    diamond["d0.yaml"] = "Global: {seed: 1}\n"
    chain = {f"c{i}.yaml": f"_base_: c{i + 1}.yaml\n" for i in range(300)}
    chain["c300.yaml"] = "Global: {seed: 1}\n"
    return {
        "deep_flow_list": {"x.yaml": "Global: {flags: " + "[" * 10000 + "]" * 10000 + "}\n"},
        "deep_flow_map": {"x.yaml": "Global: " + "{a: " * 10000 + "1" + "}" * 10000 + "\n"},
        "deep_block_map": {"x.yaml": deep_block},
        "deep_block_list": {"x.yaml": "".join("  " * i + "-\n" for i in range(500))},
        "deep_parens_scalar": {"x.yaml": "Global: {seed: " + "(" * 5000 + "1" + ")" * 5000 + "}\n"},
        "alias_bomb_list": {"x.yaml": _alias_bomb()},
        "alias_bomb_map": {"x.yaml": _map_bomb()},
        "alias_bomb_in_base": {"x.yaml": "_base_: b.yaml\nModel: {name: x}\n",
                               "b.yaml": "Global:\n  flags:\n" + "".join(
                                   "    " + line + "\n" for line in _alias_bomb().splitlines())},
        "alias_bomb_merge_keys": {"x.yaml": "a: &a {x: 1}\n" + "".join(
            f"a{i}: &a{i} {{<<: [*a{i - 1 if i > 1 else ''}], y{i}: 1}}\n".replace("*a0", "*a")
            for i in range(1, 40))},
        "recursive_alias_list": {"x.yaml": "a: &x [*x]\n"},
        "recursive_alias_map": {"x.yaml": "a: &x {b: *x}\n"},
        "recursive_merge": {"x.yaml": "a: &x {<<: *x}\n"},
        "undefined_alias": {"x.yaml": "a: *nowhere\n"},
        "base_self": {"x.yaml": "_base_: x.yaml\n"},
        "base_cycle": {"x.yaml": "_base_: y.yaml\n", "y.yaml": "_base_: [z.yaml]\n",
                       "z.yaml": "_base_: ./x.yaml\n"},
        "base_dir": {"x.yaml": "_base_: .\n"},
        "base_missing": {"x.yaml": "_base_: [nope.yaml]\n"},
        "base_binary": {"x.yaml": "_base_: b.bin\n", "b.bin": bytes(range(256)) * 4},
        "base_dev_zero": {"x.yaml": "_base_: /dev/zero\n"},
        "base_not_a_string": {"x.yaml": "_base_: [1, {a: b}]\n"},
        "base_diamond": {"x.yaml": "_base_: d11.yaml\n", **diamond},
        "base_chain_300": {"x.yaml": "_base_: c0.yaml\n", **chain},
        "non_utf8": {"x.yaml": b"Global:\n  seed: \xff\xfe\n"},
        "utf16": {"x.yaml": "Global: {seed: 1}\n".encode("utf-16")},
        "empty": {"x.yaml": b""},
        "only_nul": {"x.yaml": b"\x00" * 100},
        "top_level_list": {"x.yaml": "- 1\n- 2\n"},
        "huge_int": {"x.yaml": "Global: {epochs: " + "9" * 5000 + "}\n"},
        "huge_int_tag": {"x.yaml": "Global: {epochs: !!int " + "9" * 5000 + "}\n"},
        "bad_int_tag": {"x.yaml": "Global: {epochs: !!int 12x}\n"},
        "bad_timestamp": {"x.yaml": "Global: {seed: !!timestamp 2001-13-45}\n"},
        "python_tag": {"x.yaml": "Global: !!python/object/apply:os.system [echo hi]\n"},
        "unhashable_key": {"x.yaml": "? [a, b]\n: 1\n"},
        "duplicate_key": {"x.yaml": "Global: {seed: 1}\nGlobal: {seed: 2}\n"},
        "two_documents": {"x.yaml": "Global: {seed: 1}\n---\nGlobal: {seed: 2}\n"},
        "big_file": {"x.yaml": "# " + "x" * (2 << 20) + "\n"},
        "long_key": {"x.yaml": "Global: {" + "k" * 100000 + ": 1}\n"},
        "many_keys": {"x.yaml": "Global:\n" + "".join(f"  k{i}: {i}\n" for i in range(3000))},
    }


def _write(d, files):
    for rel, content in files.items():
        path = os.path.join(d, rel)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)


def test_yaml_configs_fuzz(tmp_path):
    rng = np.random.default_rng(SEED)
    c = Contract()
    get_config(os.path.join(ROOT, "configs/quickstart/ViT_tiny_patch4_32_shapes_1n2c_dp_fp32.yaml"))
    # hand-made hostile files
    for name, files in hostile_configs(tmp_path).items():
        d = tmp_path / "hostile" / name
        d.mkdir(parents=True)
        _write(str(d), files)
        c.run(f"yaml-hostile:{name}", lambda d=d: get_config(str(d / "x.yaml")))
    c.run("yaml-hostile:dev_zero_itself", lambda: get_config("/dev/zero"))
    c.run("yaml-hostile:directory_itself", lambda: get_config(str(tmp_path)))
    # mutations of the shipped configs, in a copy of configs/ so `_base_` still resolves
    tree = tmp_path / "configs"
    shutil.copytree(os.path.join(ROOT, "configs"), tree)
    tops = sorted(p for p in tree.rglob("*.yaml") if "_base_" not in p.parts)
    bases = sorted(p for p in tree.rglob("*.yaml") if "_base_" in p.parts)
    originals = {p: p.read_bytes() for p in tops + bases}
    for i in range(160):
        top = tops[int(rng.integers(len(tops)))]
        # mostly the file named by -c; every fourth case damages one of its `_base_` files
        target = bases[int(rng.integers(len(bases)))] if i % 4 == 3 else top
        data, how = mutate(originals[target], rng, YAML_BITS)
        target.write_bytes(data)
        try:
            c.run(f"yaml-mutated:{i} {how} {target.relative_to(tree)}", lambda: get_config(str(top)))
        finally:
            target.write_bytes(originals[target])
    # wholly random files
    for i in range(30):
        p = tmp_path / f"random{i}.yaml"
        size = int(rng.integers(1, 4000))
        p.write_bytes(random_bytes(rng, size) if i % 2 else random_text(rng, size))
        c.run(f"yaml-random:{i} {'bytes' if i % 2 else 'text'}", lambda p=p: get_config(str(p)))
    print(c.counts)
    c.check("yaml-mutated")


# ----------------------------------------------------------------------------- images

def _png(w, h, idat=b""):
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _jpeg_claiming(jpg, w, h):
    data = bytearray(jpg)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _bmp_claiming(w, h):
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + b"\0" * 16


def bomb_images(jpg):
    return {
        "png_100000x100000": _png(100000, 100000, zlib.compress(b"\0" * 4096)),
        "png_30000x30000": _png(30000, 30000, zlib.compress(b"\0" * 4096)),
        "png_65535x1": _png(65535, 1, zlib.compress(b"\0" * 4096)),
        "jpeg_30000x30000": _jpeg_claiming(jpg, 30000, 30000),
        "jpeg_65000x65000": _jpeg_claiming(jpg, 65000, 65000),
        "jpeg_0x0": _jpeg_claiming(jpg, 0, 0),
        "bmp_30000x30000": _bmp_claiming(30000, 30000),
        "bmp_negative": _bmp_claiming(-30000, -30000),
        "ppm_20000x20000": b"P6\n20000 20000\n255\n" + b"\0" * 1000,
        "pfm_20000x20000": b"PF\n20000 20000\n-1.0\n" + b"\0" * 1000,
        "hdr_20000x20000": (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n"
                            + b"\x02\x02\x4e\x20" + b"\x01" * 1000),
        "zero_bytes": b"",
        "one_byte": b"\xff",
        "jpeg_magic_only": b"\xff\xd8\xff\xe0",
        "png_magic_only": b"\x89PNG\r\n\x1a\n",
    }


NO_AUG = [{"DecodeImage": {"to_rgb": True}}, {"ResizeImage": {"size": 16}},
          {"NormalizeImage": {"scale": 1.0 / 255, "mean": [0.5] * 3, "std": [0.5] * 3,
                              "order": ""}}, {"ToCHWImage": None}]


def _encoded(rng, size, ext):
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(ext, img)[1].tobytes()


def test_images_fuzz(tmp_path):
    """Damaged image files read through ImageNetDataset: a DataError naming the file, or with
    skip_bad_images a counted replacement by the next image."""
    rng = np.random.default_rng(SEED + 1)
    c = Contract()
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    good = [_encoded(rng, 16, ".jpg"), _encoded(rng, 16, ".png")]
    for i, data in enumerate(good):
        (root / "img" / f"good{i}.bin").write_bytes(data)
    (root / "img" / "bad.bin").write_bytes(good[0])
    lst = root / "list.txt"
    lst.write_text("img/bad.bin 0\nimg/good0.bin 1\nimg/good1.bin 2\n")
    strict = ImageNetDataset(str(root), str(lst), transform_ops=NO_AUG, class_num=3)
    skipping = ImageNetDataset(str(root), str(lst), transform_ops=NO_AUG, class_num=3,
                               skip_bad_images=True)
    assert strict[(0, 0)][0].shape == (3, 16, 16)

    cases = dict(("bomb:" + k, v) for k, v in bomb_images(_encoded(rng, 32, ".jpg")).items())
    bases = {"jpeg16": _encoded(rng, 16, ".jpg"), "jpeg64": _encoded(rng, 64, ".jpg"),
             "png16": _encoded(rng, 16, ".png"), "png64": _encoded(rng, 64, ".png"),
             "bmp16": _encoded(rng, 16, ".bmp"), "webp16": _encoded(rng, 16, ".webp")}
    names = sorted(bases)
    for i in range(110):
        name = names[i % len(names)]
        data, how = mutate(bases[name], rng)
        cases[f"mutated:{i} {how} {name}"] = data
    for i in range(10):
        cases[f"random:{i}"] = random_bytes(rng, int(rng.integers(1, 5000)))
    path = str(root / "img" / "bad.bin")
    for case, data in cases.items():
        (root / "img" / "bad.bin").write_bytes(data)
        outcome = c.run(f"image:{case}", lambda: strict[(0, 0)])
        if outcome != "ok" and not outcome.startswith(f"cannot decode image {path}"):
            c.failures.append(f"image:{case}: the error does not name the file: {outcome[:200]}")
        before = skipping.skipped

        def skip():
            img, label = skipping[(0, 0)]
            assert img.shape == (3, 16, 16)
            return label

        skipped = c.run(f"image-skip:{case}", skip)
        counted = skipping.skipped - before
        if skipped != "ok" or counted != (0 if outcome == "ok" else 1):
            c.failures.append(f"image-skip:{case}: {skipped[:200]}, skipped {counted} "
                              f"(strict: {outcome[:100]})")
    print(c.counts)
    c.check("image")


# ----------------------------------------------------------------------------- list files

def test_list_files_fuzz(tmp_path):
    rng = np.random.default_rng(SEED + 2)
    c = Contract()
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(_encoded(rng, 16, ".jpg"))
    good_lines = [f"img/{i}.jpg {i}" for i in range(4)]
    good = ("\n".join(good_lines) + "\n").encode()
    bad_labels = ["", "-1", "4", "1.5", "x", "1e3", "0x1", "9" * 5000, "1,2", " ", "٣", "1_0",
                  "+1", "nan", "-0", "2,", ",", "\x00", "18446744073709551616"]
    hostile = {
        "missing_label": b"img/0.jpg\n",
        "missing_path": b" 1\n",
        "extra_column": b"img/0.jpg 1 2\n",
        "huge_line_no_newline": b"img/0.jpg " + b"x" * (3 << 20),
        "huge_label": b"img/0.jpg " + b"1" * 10000 + b"\n",
        "nul_in_path": b"img/0\x00.jpg 1\n",
        "non_utf8": good + b"img/\xff\xfe.jpg 1\n",
        "utf16": "img/0.jpg 1\n".encode("utf-16"),
        "bom": b"\xef\xbb\xbf" + good,
        "crlf": good.replace(b"\n", b"\r\n"),
        "cr_only": good.replace(b"\n", b"\r"),
        "empty": b"",
        "blank_lines": b"\n \n\t\n",
        "dev_zero_image": b"/dev/zero 1\n",
        "directory_image": b"img 1\n",
        "absolute_missing": b"/nonexistent/x.jpg 1\n",
        "long_path": b"a" * 100000 + b" 1\n",
        "many_lines": b"img/0.jpg 1\n" * 50000,
    }
    cases = {f"hostile:{k}": v for k, v in hostile.items()}
    for i in range(40):
        lines = list(good_lines)
        j = int(rng.integers(len(lines)))
        label = bad_labels[int(rng.integers(len(bad_labels)))]
        lines[j] = f"img/{j}.jpg {label}"
        cases[f"label:{i} {label[:12]!r}"] = ("\n".join(lines) + "\n").encode()
    for i in range(60):
        data, how = mutate(good, rng, [b" ", b",", b"\t", b"\x00", b"\xff", b"-", b"9" * 100,
                                       b"/dev/zero", b"../" * 50])
        cases[f"mutated:{i} {how}"] = data
    for i in range(10):
        size = int(rng.integers(1, 3000))
        cases[f"random:{i}"] = random_bytes(rng, size) if i % 2 else random_text(rng, size)
    lst = tmp_path / "list.txt"

    def read_all(**kw):
        ds = ImageNetDataset(str(tmp_path), str(lst), transform_ops=NO_AUG, **kw)
        for k in range(min(len(ds), 8)):
            ds[(k, 0)]

    for case, data in cases.items():
        lst.write_bytes(data)
        c.run(f"list:{case}", lambda: read_all(class_num=4))
        c.run(f"list-multi:{case}", lambda: read_all(class_num=4, multi_label=True))
        c.run(f"list-nocheck:{case}", lambda: read_all(check_files=False))
    print(c.counts)
    c.check("list", "list-multi", "list-nocheck")


# ----------------------------------------------------------------------------- CIFAR archives

def _fake_cifar(rng):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, obj):
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(name, {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                       b"labels": rng.integers(0, 10, 2).tolist()})
        add("batches.meta", {b"label_names": [b"c"] * 10})
    return buf.getvalue()


def test_cifar_archives_fuzz(tmp_path):
    rng = np.random.default_rng(SEED + 3)
    c = Contract()
    archive = _fake_cifar(rng)
    path = tmp_path / "cifar-10-python.tar.gz"
    raw = zlib.decompress(archive, 31)  # the tar inside, to damage it below the gzip layer
    cases = {}
    for i in range(24):
        data, how = mutate(archive, rng)
        cases[f"gz-mutated:{i} {how}"] = data
    for i in range(12):
        data, how = mutate(raw, rng)
        cases[f"tar-mutated:{i} {how}"] = data
    cases["random"] = random_bytes(rng, 3000)
    cases["empty"] = b""
    for case, data in cases.items():
        path.write_bytes(data)
        c.run(f"cifar:{case}", lambda: CIFAR10(str(path), "train")[(0, 0)])
    print(c.counts)
    c.check("cifar")


# ----------------------------------------------------------------------------- through the CLI

def _train_config(tmp_path, list_lines, images, skip=False):
    """tiny_config with an ImageNetDataset over `images` ({name: bytes}) for training."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / "img" / name).write_bytes(data)
    lst = root / "train.txt"
    lst.write_bytes(list_lines)
    path = tiny_config(tmp_path, tmp_path / "shapes", epochs=1,
                       **{"Global.eval_during_train": False})
    cfg = yaml.safe_load(open(path))
    cfg["DataLoader"]["Train"]["dataset"] = {
        "name": "ImageNetDataset", "image_root": str(root), "cls_label_path": str(lst),
        "class_num": 4, "skip_bad_images": skip, "transform_ops": NO_AUG}
    cfg["DataLoader"]["Train"]["loader"] = {"num_workers": 2}
    del cfg["DataLoader"]["Eval"]
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def _stderr_lines(result):
    """Non-empty stderr lines, without the ccache warning Paddle's import prints (2 lines)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return [line for i, line in enumerate(lines) if "No ccache found" not in line
            and not (line.strip() == "warnings.warn(warning_message)" and i
                     and "No ccache found" in lines[i - 1])]


def _assert_one_error_line(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = _stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _images(rng, n=8):
    return {f"{i}.jpg": _encoded(rng, 16, ".jpg") for i in range(n)}


def test_cli_broken_yaml_is_one_line(tmp_path):
    path = tiny_config(tmp_path, tmp_path / "shapes")
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[:text.index("Model:")] + "Model: {name: [\n")
    _assert_one_error_line(run_tool("train", ["-c", path]), path)


def test_cli_garbage_list_file_is_one_line(tmp_path):
    rng = np.random.default_rng(SEED + 4)
    lines = b"".join(b"img/%d.jpg %d\n" % (i, i % 4) for i in range(8))
    path = _train_config(tmp_path, lines + random_bytes(rng, 200), _images(rng))
    _assert_one_error_line(run_tool("train", ["-c", path]), "train.txt:9: ")


@pytest.mark.parametrize("skip", [False, True])
def test_cli_truncated_image_with_workers(tmp_path, skip):
    rng = np.random.default_rng(SEED + 5)
    images = _images(rng)
    images["3.jpg"] = images["3.jpg"][:40]
    lines = b"".join(b"img/%d.jpg %d\n" % (i, i % 4) for i in range(8))
    path = _train_config(tmp_path, lines, images, skip=skip)
    result = run_tool("train", ["-c", path])
    bad = str(tmp_path / "data" / "img" / "3.jpg")
    if not skip:
        _assert_one_error_line(result, f"cannot decode image {bad}", "skip_bad_images")
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    log = result.stdout + result.stderr
    assert f"cannot decode image {bad}; using the next image instead" in log
    assert "[Train] finished" in log
