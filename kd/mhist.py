"""MHIST (Wei et al. 2021): colorectal polyp images, HP vs SSA, read as its authors distribute it.

``ROOT/annotations.csv`` has the columns ``Image Name``, ``Majority Vote Label`` (HP or SSA),
``Number of Annotators who Selected SSA (Out of 7)`` and ``Partition`` (train or test); the PNG
images are in ``ROOT/images.zip`` (read straight from the zip) or a folder ``ROOT/images/``.
The dataset is only given out after signing its terms, so there is no download: a missing file
says where to get it. Decoded once into a uint8 tensor file beside the data, keyed by the source
files' size and time, so that 30 jobs do not decode 3,152 PNGs 30 times; where the data's folder is
read-only (a cluster's shared datasets), the file goes to ``~/.cache/kdsweep/`` instead.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kd import atomic
from kd.errors import UserError

log = logging.getLogger(__name__)
LABELS = {"HP": 0, "SSA": 1}
COLUMNS = ("Image Name", "Majority Vote Label", "Partition")
WHERE = "https://bmirds.github.io/MHIST/ (free after signing the dataset's terms)"


def _rows(csv_path: Path) -> list[tuple[int, str, int, str]]:
    """(row number, image name, label, partition) for every row, each checked."""
    rows, first = [], {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames:  # "Image Name, Majority Vote Label": spaces after the commas, as around values
                reader.fieldnames = [c.strip() for c in reader.fieldnames]
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{csv_path}: missing column '{missing[0]}' (found: {', '.join(reader.fieldnames or [])})")
            for i, row in enumerate(reader, start=2):  # row 1 is the header
                empty = [c for c in COLUMNS if not (row[c] or "").strip()]
                if empty:
                    raise UserError(f"{csv_path}: row {i}: no value in column '{empty[0]}'")
                label, part = row["Majority Vote Label"].strip(), row["Partition"].strip().lower()
                if label not in LABELS:
                    raise UserError(f"{csv_path}: row {i}: unknown label {label!r} (expected HP or SSA)")
                if part not in ("train", "test"):
                    raise UserError(f"{csv_path}: row {i}: unknown partition {part!r} (expected train or test)")
                name = row["Image Name"].strip()
                if name in first:  # trained on and tested on, or counted twice
                    raise UserError(f"{csv_path}: row {i}: image '{name}' listed twice (rows {first[name]} and {i})")
                first[name] = i
                rows.append((i, name, LABELS[label], part))
    except FileNotFoundError:
        raise _csv_missing(csv_path) from None
    except csv.Error as e:
        raise UserError(f"{csv_path}: row {len(rows) + 2}: not CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{csv_path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise UserError(f"{csv_path}: cannot read ({e.strerror or e})") from None
    for part in ("train", "test"):
        if not any(r[3] == part for r in rows):
            raise UserError(f"{csv_path}: no rows in partition '{part}'")
        lacks = [label for label, y in LABELS.items() if not any(r[3] == part and r[2] == y for r in rows)]
        if lacks:  # F1 of that class, ROC AUC and a balanced accuracy have no meaning without it
            raise UserError(f"{csv_path}: no {lacks[0]} images in partition '{part}' (MHIST's two classes, HP "
                            "and SSA, are both in each)")
    return rows


def _csv_missing(csv_path: Path) -> UserError:
    return UserError(f"{csv_path}: not found", hint=f"MHIST's annotations.csv and images.zip come from {WHERE}")


def check_present(root: Path) -> None:
    """That annotations.csv is sound, every image it names is in images.zip or images/, and each
    decodes to the size of the others, before any job starts (a job found each mistake alone, and
    every job of the sweep the same one): decoded here once into the cache the jobs then read."""
    if not (root / "annotations.csv").is_file():
        raise _csv_missing(root / "annotations.csv")
    images = _Images(root)  # the images missing altogether: said before any row of the CSV
    names = images.names()
    for i, name, _, _ in _rows(root / "annotations.csv"):
        if name not in names:
            raise UserError(f"{images.source}: image '{name}' (named in annotations.csv row {i}) is missing")
    if not any(p.exists() for p in cache_places(root)):  # a fresh cache holds them decoded: not read here
        load_arrays(root)  # decoded once, into the cache the jobs read


def _images_path(root: Path) -> Path:
    if (root / "images.zip").is_file():
        return root / "images.zip"
    if (root / "images").is_dir():
        return root / "images"
    raise UserError(f"{root}: neither images.zip nor images/ found", hint=f"MHIST's images come from {WHERE}")


class _Images:
    """The images by name, from ``root``'s images.zip or images/ (``source``): ``read(name)`` gives
    a PNG's bytes (None when it is not there), ``names()`` the names there are."""

    def __init__(self, root: Path) -> None:
        source = _images_path(root)
        self.source, self.archive, self.members = source, None, {}
        if source.suffix == ".zip":
            try:
                self.archive = zipfile.ZipFile(source)
            except zipfile.BadZipFile as e:
                raise UserError(f"{source}: not a zip file ({e})") from None
            self.members = {Path(n).name: n for n in self.archive.namelist() if not n.endswith("/")}

    def __call__(self, name: str) -> bytes | None:
        if self.archive is not None:
            return self.archive.read(self.members[name]) if name in self.members else None
        return (self.source / name).read_bytes() if (self.source / name).is_file() else None

    def names(self) -> set[str]:
        if self.archive is not None:
            return set(self.members)
        return {p.name for p in self.source.iterdir() if p.is_file()}


def _decode(blob: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:  # its message names a BytesIO object
        raise UserError(f"{where}: not a readable image (Pillow cannot tell its format: damaged, or not an "
                        "image)") from None
    except (OSError, SyntaxError) as e:
        raise UserError(f"{where}: not a readable image ({e.__class__.__name__}: {e})") from None


def cache_key(root: Path) -> str:
    """The sources' names, sizes and times: each image's in images/ too (one replaced in place
    changes neither the folder's size nor its time)."""
    parts = []
    files = [root / "annotations.csv", root / "images.zip"]
    if (root / "images").is_dir():
        files += sorted((root / "images").iterdir())
    for p in files:
        if p.exists():
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cache_places(root: Path) -> list[Path]:
    """Where the decoded tensors are kept: beside the data, else (a read-only folder) in the user's
    cache, named for the data's folder too."""
    key = cache_key(root)
    places = [root / f".kdsweep-mhist-{key}.pt"]
    home = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "kdsweep"
    if home.is_absolute():  # not where a container's user has no home ('~' left as it is)
        where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        places.append(home / f"mhist-{where}-{key}.pt")
    return places


def load_arrays(root: Path) -> dict[str, torch.Tensor]:
    """train_x, train_y, test_x, test_y as tensors (images uint8 [N, 3, H, W]), from the cache if fresh."""
    root = Path(root)
    csv_path = root / "annotations.csv"
    rows = _rows(csv_path)
    places = cache_places(root)
    for cache in places:
        if cache.exists():
            try:
                return torch.load(cache, weights_only=True)
            except Exception as e:  # a damaged cache is rebuilt
                log.warning("MHIST cache %s unreadable (%s): decoding again", cache, e)
    read = _Images(root)
    source = read.source
    images, shape = {}, None
    for i, name, _, _ in rows:
        try:
            blob = read(name)
        except (OSError, zipfile.BadZipFile, zlib.error) as e:  # a damaged member: bad CRC, bad deflate data
            raise UserError(f"{source}/{name}: cannot read ({e})") from None
        if blob is None:
            raise UserError(f"{source}: image '{name}' (named in {csv_path.name} row {i}) is missing")
        img = _decode(blob, f"{source}/{name} ({csv_path.name} row {i})")
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise UserError(f"{source}/{name}: image of {img.shape[1]}x{img.shape[0]}, expected "
                            f"{shape[1]}x{shape[0]} like the others ({csv_path.name} row {i})")
        images[name] = img
    out = {}
    for part in ("train", "test"):
        sel = [r for r in rows if r[3] == part]
        out[f"{part}_x"] = torch.from_numpy(np.stack([images[r[1]] for r in sel])).permute(0, 3, 1, 2).contiguous()
        out[f"{part}_y"] = torch.tensor([r[2] for r in sel], dtype=torch.int64)
    _keep(out, places)
    return out


def _keep(arrays: dict[str, torch.Tensor], places: list[Path]) -> None:
    """Write the decoded tensors to the first place that takes them, older versions of that place's
    kind removed; none taking them (a read-only folder, no home, a full disk) costs the next job a
    decoding, not this one its run."""
    refused = []
    for cache in places:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            for stale in cache.parent.glob(cache.name.rsplit("-", 1)[0] + "-*.pt"):
                stale.unlink(missing_ok=True)
            atomic.write_hashed(cache, lambda f: torch.save(arrays, f))
        except (OSError, UserError) as e:  # UserError: atomic's words for a file it cannot write
            refused.append(f"{e.filename or cache}: {e.strerror}" if isinstance(e, OSError) else str(e))
            continue
        log.info("MHIST decoded and cached in %s", cache)
        return
    log.warning("MHIST decoded, not cached (%s): each job decodes it again", "; ".join(refused))
