"""Values that are not daf arrays (models, metrics, figures, raw bytes), kept as files.

What goes where
---------------
* ``DataStore`` is a ``dict`` whose values can also be read as attributes. ``DataStore.save`` writes
  every value to ``<folder>/<key><ext>`` and returns ``{key: url}``; the engine calls it with the
  ``datastore/`` folder of a result dataset and keeps only those URLs in ``metadata.yaml``.
  ``DataStore.load`` turns the URLs back into a DataStore whose values are read lazily, on first
  access, so loading a result's metadata never reads a big model that nobody asked for.
  ``save`` wipes its folder first: the folder belongs to the step, and a rewritten step must not
  keep values of an earlier run. Where the engine writes a result under a temporary name and renames
  it into place, ``save(..., final_folder=...)`` makes the URLs name the final location.
* ``DataStoreIO`` writes one value to a path the caller chooses and reads it back by URL. Those
  files are the caller's to manage: nothing wipes or deletes them. Do not point it inside a
  ``datastore/`` folder of a result, which ``DataStore.save`` wipes.

URLs
----
A URL is ``file:///`` + the file's path relative to the storage root (POSIX separators,
percent-encoded), e.g. ``file:///operation_chain_results/<chain>/<step>/dataset_1/datastore/model.pkl``.
Relative, so the whole storage root can be moved or mounted elsewhere and still load. A URL with
another scheme, a host (``file://host/x``), a ``..`` component, or that resolves (through symlinks)
outside the storage root is refused: metadata files are data and must not make us read arbitrary
files.

Formats, chosen by type when writing and by file extension when reading
-----------------------------------------------------------------------
* ``.npy`` -- ``numpy.ndarray`` (and ``np.memmap``, read back as a plain ndarray) without Python
  objects, written with ``allow_pickle=False``. Object arrays and other ndarray subclasses (masked
  arrays, matrices) go to pickle.
* ``.bin`` -- ``bytes``, written as is. Any unknown extension is also read as raw bytes.
* ``.yaml`` -- plain data: ``None``, ``bool``, ``int``, ``float``, ``str`` and lists/dicts of them
  (dict keys: scalars), with exact types. Numpy scalars (bool, integer, float up to 64 bits, str)
  are converted to the Python scalar of the same value, so ``np.float64(0.5)`` comes back as
  ``0.5``. Non-ASCII text is written escaped, which PyYAML reads back exactly (raw Unicode it does
  not always: U+0085).
  ``.yml`` and ``.json`` are read as plain data too.
* ``.pkl`` -- anything else (tuples, sets, class instances, ...). Unpickling runs code, so a pickle
  is read only from inside the storage root and only when the caller passes ``allow_pickle=True``.

The bytes written for the same value are the same (no timestamps, fixed pickle protocol, dict order
kept), so a rerun that produces the same values produces the same files.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import yaml

from opchain.atomic import write_atomic
from opchain.errors import OpchainError
from opchain.table import LOADER

__all__ = ["DataStore", "DataStoreError", "DataStoreIO", "path_to_url", "url_to_path"]

# Fixed, so the bytes do not change with the interpreter's default protocol.
_PICKLE_PROTOCOL = 5
# Leaves room for the extension and the temporary-file decoration within the usual 255-byte limit.
_MAX_KEY_BYTES = 200
_PLAIN_EXTS = (".yaml", ".yml", ".json")
_KNOWN_EXTS = (".npy", ".bin", ".pkl", *_PLAIN_EXTS)


class DataStoreError(OpchainError):
    """A datastore value cannot be written or read, or a URL/path is refused."""


# --------------------------------------------------------------------------------------- URLs


def _resolved_root(storage_root: Path) -> Path:
    return Path(storage_root).resolve()


def _check_inside(path: Path, storage_root: Path, what: str) -> Path:
    """The resolved ``path``, if it (after following symlinks) is strictly inside the root."""
    root = _resolved_root(storage_root)
    resolved = Path(path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise DataStoreError(
            f"{what} resolves to {resolved}, which is not inside the storage root {root}"
        )
    return resolved


def _relative_parts(relative: str, what: str) -> PurePosixPath:
    """Validate a POSIX path relative to the root: no absolute path, no '..', no NUL."""
    if "\0" in relative:
        raise DataStoreError(f"{what} contains a NUL character")
    rel = PurePosixPath(relative)
    if rel.is_absolute():
        raise DataStoreError(f"{what} must be relative to the storage root, not absolute")
    if ".." in rel.parts:
        raise DataStoreError(f"{what} must not contain '..'")
    if not rel.parts:
        raise DataStoreError(f"{what} names the storage root itself, not a file inside it")
    return rel


def url_to_path(url: str, storage_root: Path) -> Path:
    """The file a datastore URL names, resolved, after checking it stays inside ``storage_root``.

    Only ``file:///<relative path>`` is accepted: no other scheme, no host, no query or fragment,
    no ``..`` component, nothing that resolves (through symlinks) outside the storage root.
    """
    if not isinstance(url, str):
        raise DataStoreError(f"datastore URL must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise DataStoreError(f"datastore URL {url!r} must use the file scheme (file:///<path>)")
    if parts.netloc:
        raise DataStoreError(f"datastore URL {url!r} names a host; only file:///<path> is accepted")
    if parts.query or parts.fragment or not parts.path.startswith("/"):
        raise DataStoreError(f"datastore URL {url!r} is not of the form file:///<path>")
    rel = _relative_parts(unquote(parts.path[1:]), f"datastore URL {url!r}")
    return _check_inside(Path(storage_root) / rel, storage_root, f"datastore URL {url!r}")


def path_to_url(path: Path, storage_root: Path) -> str:
    """``file:///`` + the path of ``path`` relative to ``storage_root`` (POSIX, percent-encoded).

    ``path`` is an ordinary path (relative ones are relative to the working directory); it must be
    strictly inside the storage root, also after following symlinks.
    """
    path = Path(path)
    _check_inside(path, storage_root, f"path {path}")
    # Prefer the path as the caller spelled it (lexically normalised), so a symlink inside the root
    # stays in the URL; fall back to the resolved form when the root was given through a symlink.
    lexical = Path(os.path.abspath(path))
    root_lexical = Path(os.path.abspath(storage_root))
    if lexical.is_relative_to(root_lexical):
        rel = lexical.relative_to(root_lexical)
    else:
        rel = path.resolve().relative_to(_resolved_root(storage_root))
    return "file:///" + quote(rel.as_posix(), safe="/")


# ------------------------------------------------------------------------------ serialization


class _NotPlain(Exception):
    """Internal: the value is not plain data and goes to pickle."""


def _plain_scalar(value: Any) -> Any:
    kind = type(value)
    if value is None or kind in (bool, int, float):
        return value
    if kind is str:
        try:
            value.encode("utf-8")  # lone surrogates cannot be written as YAML
        except UnicodeEncodeError:
            raise _NotPlain from None
        return value
    # Numpy scalars become the Python scalar of the same value; longdouble and complex would lose
    # information, so they (like datetime64, bytes_, void) go to pickle.
    if isinstance(value, np.bool_ | np.integer | np.str_) or (
        isinstance(value, np.floating) and value.dtype.itemsize <= 8
    ):
        return _plain_scalar(value.item())
    raise _NotPlain


def _to_plain(value: Any, active: set[int]) -> Any:
    """A copy of ``value`` with numpy scalars made Python; _NotPlain if it is not plain data."""
    kind = type(value)
    if kind is list or kind is dict:
        if id(value) in active:  # a cycle: YAML without aliases cannot hold it
            raise _NotPlain
        active.add(id(value))
        try:
            if kind is list:
                return [_to_plain(item, active) for item in value]
            return {_plain_scalar(k): _to_plain(v, active) for k, v in value.items()}
        finally:
            active.discard(id(value))
    return _plain_scalar(value)


class _Dumper(yaml.SafeDumper):
    # Aliases (&id001) depend on object identity, not value; the copy from _to_plain shares nothing.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml_bytes(plain: Any) -> bytes:
    # allow_unicode=False: PyYAML does not read back some raw characters (e.g. U+0085) exactly.
    text = yaml.dump(
        plain,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=False,
        default_flow_style=False,
        width=2**31,
    )
    return text.encode("ascii")


def _is_npy_array(value: Any) -> bool:
    return type(value) in (np.ndarray, np.memmap) and not value.dtype.hasobject


def _npy_bytes(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


def _pickle_bytes(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception as error:
        raise DataStoreError(
            f"cannot pickle a value of type {type(value).__name__}: {error}"
        ) from None


def _natural_ext(value: Any) -> str:
    """The extension ``value`` gets when its format is chosen by type (for error messages)."""
    if type(value) is bytes:
        return ".bin"
    if _is_npy_array(value):
        return ".npy"
    try:
        _to_plain(value, set())
    except (_NotPlain, RecursionError):
        return ".pkl"
    return ".yaml"


def _encode_natural(value: Any) -> tuple[str, bytes]:
    """``value`` serialized in the format chosen by its type, and that format's extension."""
    if type(value) is bytes:
        return ".bin", value
    if _is_npy_array(value):
        return ".npy", _npy_bytes(value)
    try:
        plain = _to_plain(value, set())
    except (_NotPlain, RecursionError):
        return ".pkl", _pickle_bytes(value)
    return ".yaml", _yaml_bytes(plain)


def _encode(value: Any, ext: str) -> bytes:
    """``value`` serialized in the format of ``ext`` (a lowercase, known extension)."""
    if ext == ".bin":
        if type(value) is not bytes:
            raise DataStoreError(f"only bytes can be written as {ext}, not {type(value).__name__}")
        return value
    if ext == ".npy":
        if not _is_npy_array(value):
            raise DataStoreError(
                f"only numpy arrays without Python objects can be written as .npy, not "
                f"{type(value).__name__}; use .pkl"
            )
        return _npy_bytes(value)
    if ext == ".pkl":
        return _pickle_bytes(value)
    try:
        plain = _to_plain(value, set())
    except (_NotPlain, RecursionError):
        raise DataStoreError(
            f"a {type(value).__name__} is not plain data (None, bool, int, float, str, lists and "
            f"dicts of them) and cannot be written as {ext}; use .pkl"
        ) from None
    if ext == ".json":
        try:
            # Keys other than str would silently become strings; NaN/inf are not JSON.
            text = json.dumps(_json_checked(plain), ensure_ascii=True, indent=2, allow_nan=False)
        except (ValueError, TypeError) as error:
            raise DataStoreError(f"cannot write this value as JSON ({error}); use .yaml") from None
        return (text + "\n").encode("ascii")
    return _yaml_bytes(plain)


def _json_checked(plain: Any) -> Any:
    if isinstance(plain, dict):
        if any(type(k) is not str for k in plain):
            raise ValueError("JSON object keys must be strings")
        for item in plain.values():
            _json_checked(item)
    elif isinstance(plain, list):
        for item in plain:
            _json_checked(item)
    return plain


def _decode_file(path: Path, url: str, *, allow_pickle: bool) -> Any:
    """Read the file at ``path`` (already checked to be inside the root) by its extension."""
    ext = path.suffix.lower()
    if ext == ".pkl" and not allow_pickle:
        raise DataStoreError(
            f"{url} is a pickle, and unpickling can run arbitrary code; pass allow_pickle=True "
            f"to read it if you trust this storage root"
        )
    try:
        if ext == ".npy":
            with path.open("rb") as file:
                return np.lib.format.read_array(file, allow_pickle=allow_pickle)
        data = path.read_bytes()
        if ext == ".pkl":
            return pickle.loads(data)
        if ext == ".json":
            return json.loads(data)
        if ext in (".yaml", ".yml"):
            return yaml.load(data, Loader=LOADER)
        return data
    except FileNotFoundError:
        raise DataStoreError(f"cannot read {url}: the file {path} does not exist") from None
    except Exception as error:
        message = str(error).replace("\n", " ")
        raise DataStoreError(f"cannot read {url} ({type(error).__name__}: {message})") from None


def _require_root(storage_root: Path) -> None:
    if not Path(storage_root).is_dir():
        raise DataStoreError(f"storage root {storage_root} is not an existing directory")


# ---------------------------------------------------------------------------------- DataStore


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise DataStoreError(f"DataStore keys must be strings, not {type(key).__name__} ({key!r})")
    if key in ("", ".", "..") or "/" in key or "\0" in key:
        raise DataStoreError(
            f"DataStore key {key!r} is not a valid file name stem (non-empty, no '/', no NUL, "
            f"not '.' or '..')"
        )
    try:
        encoded = os.fsencode(key)
    except UnicodeEncodeError:
        raise DataStoreError(f"DataStore key {key!r} cannot be used as a file name") from None
    if len(encoded) > _MAX_KEY_BYTES:
        raise DataStoreError(f"DataStore key {key[:40]!r}... is longer than {_MAX_KEY_BYTES} bytes")
    return key


class _Pending:
    """A value not read yet: where it lives and whether pickle may be used to read it."""

    __slots__ = ("allow_pickle", "storage_root", "url")

    def __init__(self, url: str, storage_root: Path, allow_pickle: bool) -> None:
        self.url = url
        self.storage_root = storage_root
        self.allow_pickle = allow_pickle

    def __repr__(self) -> str:
        return f"<not loaded: {self.url}>"


class DataStore(dict):
    """A dict whose values can also be read and set as attributes, and persist to files by URL.

    ``ds.model`` is ``ds["model"]``; a missing key raises AttributeError, so ``hasattr`` and
    ``getattr(ds, name, default)`` work. Keys that are also dict method names (``items``, ``save``,
    ...) are only reachable with ``ds[key]``.

    Lazy loading: a DataStore from ``load`` keeps a placeholder per key in the underlying dict and
    reads the file on the first ``ds[key]`` (the value then replaces the placeholder). Every public
    accessor goes through ``__getitem__``: ``get``, ``values``, ``items`` (these two return live
    ``collections.abc`` views), ``pop``, ``popitem``, ``setdefault``, ``==``, ``|``, ``dict(ds)``,
    ``{**ds}``, ``json.dumps``, pickling. ``keys``, ``in``, ``len``, iteration, ``copy`` and
    ``repr`` do not read files (``repr`` shows ``<not loaded: URL>``; ``copy`` keeps placeholders).
    """

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.update(*args, **kwargs)

    # -- dict protocol, routed through __getitem__ so placeholders are never handed out

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, _check_key(key), value)

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if isinstance(value, _Pending):
            path = url_to_path(value.url, value.storage_root)
            value = _decode_file(path, value.url, allow_pickle=value.allow_pickle)
            dict.__setitem__(self, key, value)
        return value

    def __iter__(self) -> Iterator[str]:
        # Defined in Python on purpose: it makes dict(ds) and {**ds} use keys() + __getitem__
        # instead of copying the raw storage (placeholders).
        return dict.__iter__(self)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (self.get is this method)

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        return ItemsView(self)

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        return ValuesView(self)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 positional argument, got {len(args)}")
        for source in (*args, kwargs):
            if isinstance(source, DataStore):
                pairs: Any = dict.items(source)  # keep placeholders: copying does not load
            elif isinstance(source, Mapping):
                pairs = ((key, source[key]) for key in source)
            elif hasattr(source, "keys"):
                pairs = ((key, source[key]) for key in source.keys())  # noqa: SIM118 (not a Mapping)
            else:
                pairs = source
            for key, value in pairs:
                self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self[key] = default
        return default

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            value = self[key]
            dict.__delitem__(self, key)
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self) -> tuple[str, Any]:
        if not self:
            raise KeyError("popitem(): DataStore is empty")
        key = next(reversed(self.keys()))
        return key, self.pop(key)

    def copy(self) -> DataStore:
        return DataStore(self)

    __copy__ = copy

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (and deepcopy) needs the values themselves, not placeholders.
        return (DataStore, (dict(self.items()),))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, dict):
            return NotImplemented
        mine = dict(self.items())
        return mine == (dict(other.items()) if isinstance(other, DataStore) else other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: Any) -> DataStore:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: Any) -> dict[Any, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(self.items())
        return merged

    def __ior__(self, other: Any) -> DataStore:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __repr__(self) -> str:
        return f"DataStore({dict.__repr__(self)})"

    # -- attribute access

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Dunder names are never keys: protocols such as
        # copy and pickle probe them and must get AttributeError.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"DataStore has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"DataStore has no key {name!r}") from None

    # -- persistence

    def save(
        self, folder: Path, storage_root: Path, *, final_folder: Path | None = None
    ) -> dict[str, str]:
        """Wipe ``folder``, write each value to ``folder/<key><ext>``, return ``{key: url}``.

        ``folder`` must be strictly inside ``storage_root``; it is the step's own folder and is
        deleted with everything in it first. Values not loaded yet are copied byte for byte (so a
        pickle is copied without being unpickled), and all values are encoded before the wipe, so
        saving a DataStore back into the folder it was loaded from loses nothing.

        ``final_folder``: when ``folder`` sits in a directory written under a temporary name and
        renamed into place afterwards, the URLs must name where the files will be, not where they
        are written: pass that final location here (also inside the root; nothing is done there).
        """
        folder = Path(folder)
        url_folder = folder if final_folder is None else Path(final_folder)
        _require_root(storage_root)
        _check_inside(folder, storage_root, f"datastore folder {folder}")
        _check_inside(url_folder, storage_root, f"datastore folder {url_folder}")
        encoded: list[tuple[str, str, bytes]] = []
        for key in self.keys():
            _check_key(key)
            raw = dict.__getitem__(self, key)
            if isinstance(raw, _Pending):
                source = url_to_path(raw.url, raw.storage_root)
                ext = source.suffix.lower() if source.suffix.lower() in _KNOWN_EXTS else ".bin"
                try:
                    data = source.read_bytes()
                except OSError as error:
                    raise DataStoreError(
                        f"cannot read {raw.url} to save {key!r}: {error}"
                    ) from None
            else:
                ext, data = _encode_natural(raw)
            encoded.append((key, ext, data))
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise DataStoreError(f"datastore folder {folder} exists and is not a plain directory")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        urls: dict[str, str] = {}
        for key, ext, data in encoded:
            path = folder / f"{key}{ext}"
            write_atomic(path, data)
            urls[key] = path_to_url(url_folder / path.name, storage_root)
        return urls

    @classmethod
    def load(
        cls, urls: Mapping[str, str], storage_root: Path, *, allow_pickle: bool = False
    ) -> DataStore:
        """A DataStore whose values are read from ``urls`` on first access.

        The URLs are checked now (scheme, containment in the root); the files are read only when a
        value is accessed. A ``.pkl`` value then needs ``allow_pickle=True``.
        """
        store = cls()
        for key, url in urls.items():
            url_to_path(url, storage_root)
            store[key] = _Pending(url, Path(storage_root), allow_pickle)
        return store


# -------------------------------------------------------------------------------- DataStoreIO


class DataStoreIO:
    """Write single values to caller-chosen paths under the storage root, and read them by URL.

    The format comes from the extension of ``relative_path``: ``.npy`` (arrays without objects),
    ``.yaml``/``.yml``/``.json`` (plain data), ``.pkl`` (anything, pickled). ``bytes`` are written
    as is whatever the extension, which is how to store raw data (and any other extension requires
    bytes). ``read`` decodes by the same extensions; any other extension reads raw bytes. Nothing
    here ever deletes a file: they are the caller's to manage.
    """

    def __init__(self, storage_root: Path) -> None:
        self.storage_root = Path(storage_root)

    def _path(self, relative_path: str) -> Path:
        if not isinstance(relative_path, str):
            raise DataStoreError(
                f"relative path must be a string, not {type(relative_path).__name__}"
            )
        rel = _relative_parts(relative_path, f"relative path {relative_path!r}")
        path = self.storage_root / rel
        _check_inside(path, self.storage_root, f"relative path {relative_path!r}")
        return path

    def url(self, relative_path: str) -> str:
        """The URL of ``relative_path`` (the file need not exist)."""
        return path_to_url(self._path(relative_path), self.storage_root)

    def write(self, value: Any, relative_path: str) -> str:
        """Write ``value`` to ``relative_path`` (atomically, replacing any file there); its URL."""
        _require_root(self.storage_root)
        path = self._path(relative_path)
        ext = path.suffix.lower()
        if type(value) is bytes:
            data = value
        elif ext in _KNOWN_EXTS and ext != ".bin":
            data = _encode(value, ext)
        else:
            raise DataStoreError(
                f"cannot write a {type(value).__name__} to {relative_path!r}: only bytes go to a "
                f"path without .npy/.yaml/.yml/.json/.pkl; use {_natural_ext(value)!r} "
                f"for this value"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        # The parent may have been created through a symlink: check again before writing.
        _check_inside(path, self.storage_root, f"relative path {relative_path!r}")
        write_atomic(path, data)
        return path_to_url(path, self.storage_root)

    def read(self, url: str, *, allow_pickle: bool = False) -> Any:
        """The value at ``url``, decoded by its file extension (pickle only if allowed)."""
        return _decode_file(url_to_path(url, self.storage_root), url, allow_pickle=allow_pickle)
