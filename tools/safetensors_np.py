"""A tiny, dependency-free safetensors reader/writer on numpy.

Debian 12 ships no python3-safetensors, so the golden-file generator and the PyTorch round trip
use this instead. The format (https://github.com/huggingface/safetensors):

    8 bytes    N, the header length, little-endian u64
    N bytes    JSON {name: {"dtype": "F64", "shape": [..], "data_offsets": [begin, end]},
                     "__metadata__": {str: str}}   (the metadata entry is optional)
    the rest   the tensor bytes, little-endian, C order; offsets are relative to this section

What save() writes (and what the reference Rust reader accepts):
  - the header is padded with spaces so that the data section starts at a multiple of 8;
  - tensors are laid out without gaps (the reference reader rejects gaps), 8-byte dtypes first,
    then 4-byte ones, each group by name, so every tensor's offset is a multiple of its element
    size, and every offset is a multiple of 8 when all tensors are F64/I64 (as in lstmgrad's
    files);
  - the file is written to a temporary file in the same folder and renamed over the target, so
    no partial file is ever left behind.

load() accepts any well-formed file of the dtypes below; check() lists where a file departs from
what the reference reader accepts (gaps, misaligned offsets, trailing bytes).

Usage as a script prints a file's tensors:  python3 tools/safetensors_np.py FILE...
"""

import json
import os
import struct
import sys
import tempfile

import numpy as np

# safetensors dtype name -> numpy dtype (little-endian).
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# What save() writes: numpy kind + itemsize -> safetensors name.
_SAVE_DTYPES = {("f", 8): "F64", ("f", 4): "F32", ("i", 8): "I64", ("i", 4): "I32"}

_MAX_HEADER = 100 * 1024 * 1024  # as the reference reader


class SafetensorsError(ValueError):
    """A malformed file; the message names the file and what was wrong."""


def _read_header(path, blob):
    if len(blob) < 8:
        raise SafetensorsError(f"{path}: file too short for a safetensors header ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise SafetensorsError(f"{path}: header length {n} does not fit the file ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    return header, 8 + n


def load(path):
    """Reads a safetensors file. Returns (tensors, metadata): a dict name -> np.ndarray (a copy,
    native byte order) and a dict str -> str (empty when the file has no __metadata__)."""
    with open(path, "rb") as f:
        blob = f.read()
    header, start = _read_header(path, blob)
    data = memoryview(blob)[start:]
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    tensors = {}
    for name, info in header.items():
        where = f"{path}: {name}"
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{where}: needs dtype, shape and data_offsets [begin, end]") from None
        if dtype_name not in _DTYPES:
            raise SafetensorsError(f"{where}: unsupported dtype {dtype_name!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        dtype = _DTYPES[dtype_name]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= len(data)):
            raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] outside the data ({len(data)} bytes)")
        if end - begin != count * dtype.itemsize:
            raise SafetensorsError(
                f"{where}: data_offsets span {end - begin} bytes, shape {shape} of {dtype_name} needs "
                f"{count * dtype.itemsize}"
            )
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)
        tensors[name] = arr.astype(dtype.newbyteorder("="), copy=True)
    return tensors, dict(metadata)


def check(path):
    """Returns a list of strings: where the file departs from what the reference (Rust) reader
    accepts or from save()'s layout. Empty means the file is clean."""
    with open(path, "rb") as f:
        blob = f.read()
    header, start = _read_header(path, blob)
    header.pop("__metadata__", None)
    problems = []
    if start % 8:
        problems.append(f"data section starts at byte {start}, not a multiple of 8")
    if not blob[8:start].decode("utf-8").startswith("{"):
        problems.append("header does not start with '{'")
    spans = sorted((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in header.items())
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            problems.append(f"{name}: starts at {begin}, previous tensor ends at {pos} (gap or overlap)")
        itemsize = _DTYPES[header[name]["dtype"]].itemsize
        if begin % itemsize:
            problems.append(f"{name}: offset {begin} not a multiple of its element size {itemsize}")
        pos = end
    if pos != len(blob) - start:
        problems.append(f"data section is {len(blob) - start} bytes, tensors cover {pos}")
    return problems


def save(path, tensors, metadata=None):
    """Writes `tensors` (name -> array-like of float64/float32/int64/int32) and `metadata`
    (str -> str) to `path` atomically (temporary file, then rename)."""
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"{path}: bad tensor name {name!r}")
        arr = np.asarray(value)
        key = (arr.dtype.kind, arr.dtype.itemsize)
        if key not in _SAVE_DTYPES:
            raise ValueError(f"{path}: {name}: dtype {arr.dtype} not supported (F64, F32, I64, I32)")
        arrays[name] = (arr, _SAVE_DTYPES[key])
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{path}: metadata must map strings to strings")

    # 8-byte dtypes first so that, with no gaps, every offset is aligned to its element size.
    order = sorted(arrays, key=lambda n: (-arrays[n][0].dtype.itemsize, n))
    header, chunks, pos = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name in order:
        arr, dtype_name = arrays[name]
        raw = np.ascontiguousarray(arr, dtype=_DTYPES[dtype_name]).tobytes()
        header[name] = {"dtype": dtype_name, "shape": list(arr.shape), "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for raw in chunks:
                f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _main(argv):
    if not argv:
        print("usage: safetensors_np.py FILE...", file=sys.stderr)
        return 2
    for path in argv:
        tensors, metadata = load(path)
        print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")
        for k, v in metadata.items():
            print(f"  __metadata__ {k} = {v}")
        for name, arr in tensors.items():
            print(f"  {name:24s} {str(arr.dtype):8s} {list(arr.shape)}")
        for p in check(path):
            print(f"  note: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
