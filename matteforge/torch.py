"""A torch ``Dataset`` over a built matteforge dataset: stored composites or fresh ones per epoch.

``MattingDataset(root, split="train", composite="stored")`` reads the Parquet manifest (a local
folder or any fsspec URI) and yields dicts of float32 CHW tensors in [0, 1]: ``image``,
``alpha``, ``trimap`` (0, 0.5, 1), ``fg``, ``bg``, plus ``composite_id`` and ``sample_id``.

* ``stored``: one item per row of the composites table, the merged file exactly as built; a
  composite the build did not store (``composite.store: false``) is made from its row on
  read, the same pixels its file would hold.
* ``on_the_fly``: one item per ok sample (times ``repeats``), composited anew on a random
  background with Composition-1K-style augmentation (:mod:`matteforge.tasks.augment`).

Everything random about item ``i`` comes from ``numpy.random.default_rng([seed, epoch, i])``,
so a batch is the same whichever DataLoader worker makes it; :meth:`MattingDataset.set_epoch`
moves to the next epoch's draws.  Filesystems are opened lazily in the process that reads
(never pickled), so ``DataLoader(num_workers=N)`` works with fork, spawn or forkserver.
"""

from __future__ import annotations

import os
import posixpath
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import torch
from fsspec.utils import get_protocol
from torch.utils.data import Dataset

from matteforge.dataset.codec import DecodeMode, decode
from matteforge.dataset.manifest import read_table
from matteforge.dataset.materialize import CompositeRecipe
from matteforge.dataset.storage import Location, locate, read_bytes
from matteforge.tasks import augment
from matteforge.tasks.ingest import decode_image

CompositeMode = Literal["stored", "on_the_fly"]
CROP_SCALES = (1.0, 1.5, 2.0)  # crop side / crop_size, as Deep Image Matting's 320/480/640 → 320
_BACKGROUND_CACHE = 8  # decoded backgrounds kept per process (a 2560x1600 one is 12 MB)


@dataclass(frozen=True)
class _Sample:
    sample_id: str
    fg_uri: str
    alpha_uri: str
    trimap_uri: str


@dataclass(frozen=True)
class _Composite:
    composite_id: str
    sample: _Sample
    merged_uri: str | None  # None: not stored, made from ``recipe`` on read
    recipe: CompositeRecipe

    @property
    def bg_uri(self) -> str:
        return self.recipe.bg_uri


def dataset_root(manifest_uri: str) -> str:
    """The dataset root from its URI or from its ``manifest`` folder's URI."""
    root = manifest_uri.rstrip("/")
    return root[: -len("/manifest")] if root.endswith("/manifest") else root


class MattingDataset(Dataset):
    """Matting training items from a matteforge dataset (see the module docstring).

    Args:
        manifest_uri: dataset root (or its ``manifest`` folder), a path or fsspec URI.
        split: ``"train"``, ``"test"`` or None for both.
        composite: ``"stored"`` (the built composites) or ``"on_the_fly"`` (new each epoch).
        crop_size: side of the square items; None keeps full images (then use batch_size=1,
            sizes differ).  Crops are centred on an unknown pixel and resized to this size.
        seed: base of every random draw (a non-negative int).
        storage_options: fsspec options for the root's filesystem (endpoint, credentials ...).
        augment: on_the_fly: two-foreground mixing, random affine, random-erosion trimap,
            crop scale, colour jitter, random background window; stored: horizontal flip and
            crop scale.  False: no augmentation, the stored trimap, crops of ``crop_size``.
        repeats: on_the_fly only, items per sample per epoch.
        mix_probability: on_the_fly, chance that a second foreground is mixed in.
    """

    def __init__(
        self,
        manifest_uri: str,
        split: str | None = "train",
        composite: CompositeMode = "stored",
        *,
        crop_size: int | None = 512,
        seed: int = 0,
        storage_options: dict[str, Any] | None = None,
        augment: bool = True,
        repeats: int = 1,
        mix_probability: float = 0.5,
    ) -> None:
        if composite not in ("stored", "on_the_fly"):
            raise ValueError(f"composite must be 'stored' or 'on_the_fly', got {composite!r}")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be a positive int or None, got {crop_size}")
        if seed < 0 or repeats < 1:
            raise ValueError("seed must be >= 0 and repeats >= 1")
        self.root = dataset_root(manifest_uri)
        self.split, self.composite, self.crop_size = split, composite, crop_size
        self.seed, self.augment, self.repeats = int(seed), augment, int(repeats)
        self.mix_probability = float(mix_probability)
        self.storage_options = dict(storage_options or {})
        self.epoch = 0
        self._locs: dict[str, Location] = {}
        self._pid = os.getpid()  # the process that opened ``_locs``
        self._bg_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.samples, self.composites, self.backgrounds = self._index()
        if not len(self):
            raise ValueError(f"no items: {self.root} has no ok {composite} data in split {split!r}")

    # -- manifest -------------------------------------------------------------------------

    def _index(self) -> tuple[list[_Sample], list[_Composite], list[str]]:
        loc = self._root()
        wanted = {self.split} if self.split is not None else {"train", "test"}
        by_id: dict[str, _Sample] = {}
        for row in read_table(loc, "samples").to_pylist():
            if row["status"] == "ok" and row.get("split") in wanted:
                by_id[row["sample_id"]] = _Sample(row["sample_id"], row["fg_uri"],
                                                  row["alpha_uri"], row["trimap_uri"])
        samples = [by_id[k] for k in sorted(by_id)]
        composites: list[_Composite] = []
        backgrounds: list[str] = []
        if self.composite == "stored":
            rows = read_table(loc, "composites").to_pylist()
            for row in sorted(rows, key=lambda r: r["composite_id"]):
                if row["sample_id"] in by_id:  # also drops rows of uncommitted shards
                    composites.append(_Composite(
                        row["composite_id"], by_id[row["sample_id"]], row["merged_uri"],
                        CompositeRecipe.from_row(row)))
        else:
            rows = read_table(loc, "backgrounds").to_pylist()
            backgrounds = sorted(r["bg_uri"] for r in rows if r["status"] == "ok" and r["bg_uri"])
            if samples and not backgrounds:
                raise ValueError(f"on_the_fly needs backgrounds: {self.root} lists no ok one")
        return samples, composites, backgrounds

    # -- torch Dataset --------------------------------------------------------------------

    def __len__(self) -> int:
        if self.composite == "stored":
            return len(self.composites)
        return len(self.samples) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s augmentations (call before iterating; with
        ``persistent_workers=True`` workers keep the epoch they were started with)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator behind item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = self.rng(index)
        if self.composite == "stored":
            arrays, ids = self._stored(self.composites[index], rng)
        else:
            arrays, ids = self._on_the_fly(index % len(self.samples), rng)
        return {**{k: _tensor(v) for k, v in arrays.items()}, **ids}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open filesystems or cached images (spawn and forkserver workers
        reopen them lazily; fork workers see :meth:`_open`)."""
        state = self.__dict__.copy()
        state["_locs"], state["_bg_cache"] = {}, OrderedDict()
        return state

    # -- items ----------------------------------------------------------------------------

    def _stored(
        self, item: _Composite, rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        alpha = self._gray(item.sample.alpha_uri)
        fg = self._rgb(item.sample.fg_uri)
        trimap = self._gray(item.sample.trimap_uri)
        bg = item.recipe.fit(self._background(item.bg_uri))
        image = self._rgb(item.merged_uri) if item.merged_uri else self._remake(item, fg, alpha, bg)
        colour = {"image": image, "fg": fg, "bg": bg}
        if self.augment and rng.random() < 0.5:
            colour = {k: _mirror(v) for k, v in colour.items()}
            alpha, trimap = _mirror(alpha), _mirror(trimap)
        if self.crop_size is not None:
            box = augment.choose_crop(trimap == augment.UNKNOWN, self._crop_side(rng), rng)
            colour = {k: augment.crop_resize(v, box, self.crop_size) for k, v in colour.items()}
            alpha = augment.crop_resize(alpha, box, self.crop_size)
            trimap = augment.crop_resize(trimap, box, self.crop_size, nearest=True)
        arrays = {k: v.astype(np.float32) / 255.0 for k, v in colour.items()}
        arrays.update(alpha=alpha.astype(np.float32) / 255.0, trimap=_trimap_levels(trimap))
        ids = {"composite_id": item.composite_id, "sample_id": item.sample.sample_id}
        return arrays, ids

    def _remake(self, item: _Composite, fg: np.ndarray, alpha: np.ndarray,
                bg: np.ndarray) -> np.ndarray:
        """A composite the build did not store, made from its row as the build would have
        (``composite.store: false``): the same pixels its file would decode to."""
        recipe = item.recipe
        if recipe.fg_uri != item.sample.fg_uri:
            fg = self._rgb(recipe.fg_uri)
        if recipe.alpha_uri != item.sample.alpha_uri:
            alpha = self._gray(recipe.alpha_uri)
        return recipe.as_read(recipe.render(fg, alpha, bg))

    def _on_the_fly(
        self, position: int, rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        sample = self.samples[position]
        fg, alpha = self._rgb(sample.fg_uri), self._gray(sample.alpha_uri)
        sample_id = sample.sample_id
        if self.augment:
            if len(self.samples) > 1 and rng.random() < self.mix_probability:
                other = self.samples[(position + 1 + int(rng.integers(len(self.samples) - 1)))
                                     % len(self.samples)]
                fg, alpha = augment.mix_foregrounds(fg, alpha, self._rgb(other.fg_uri),
                                                    self._gray(other.alpha_uri))
                sample_id = f"{sample_id}+{other.sample_id}"
            fg, alpha = augment.random_affine(fg, alpha, rng)
            if self.crop_size is not None:
                box = augment.choose_crop(_partial(alpha), self._crop_side(rng), rng)
                fg = augment.crop_resize(fg, box, self.crop_size)
                alpha = augment.crop_resize(alpha, box, self.crop_size)
            trimap, _ = augment.random_trimap(alpha, rng)
        else:
            trimap = self._gray(sample.trimap_uri)
            if self.crop_size is not None:
                box = augment.choose_crop(trimap == augment.UNKNOWN, self.crop_size, rng)
                fg = augment.crop_resize(fg, box, self.crop_size)
                alpha = augment.crop_resize(alpha, box, self.crop_size)
                trimap = augment.crop_resize(trimap, box, self.crop_size, nearest=True)
        fg01 = fg.astype(np.float32) / 255.0
        if self.augment:
            fg01 = augment.color_jitter(fg01, rng)
        bg_uri = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        height, width = alpha.shape
        bg = augment.background_window(self._background(bg_uri), height, width,
                                       rng if self.augment else None)
        bg01 = bg.astype(np.float32) / 255.0
        alpha01 = alpha.astype(np.float32) / 255.0
        arrays = {"image": augment.blend(fg01, alpha01, bg01), "alpha": alpha01,
                  "trimap": _trimap_levels(trimap), "fg": fg01, "bg": bg01}
        bg_name = posixpath.splitext(posixpath.basename(bg_uri))[0]
        return arrays, {"composite_id": f"{sample_id}_{bg_name}", "sample_id": sample_id}

    def _crop_side(self, rng: np.random.Generator) -> int:
        assert self.crop_size is not None
        scale = CROP_SCALES[int(rng.integers(len(CROP_SCALES)))] if self.augment else 1.0
        return round(self.crop_size * scale)

    # -- storage --------------------------------------------------------------------------

    def _open(self) -> dict[str, Location]:
        """This process's filesystems: a forked worker inherits its parent's without pickling,
        and an async client (s3fs, gcsfs) refuses to run in a child, so each process opens its
        own."""
        if self._pid != os.getpid():
            self._locs, self._pid = {}, os.getpid()
            # OpenCV's thread pool does not survive fork: a forked worker that uses it can wait
            # forever on threads that were not copied (pytorch/pytorch#1355). Workers are
            # processes already, so each runs OpenCV single-threaded.
            cv2.setNumThreads(0)
        return self._locs

    def _root(self) -> Location:
        if "" not in self._open():
            self._locs[""] = locate(self.root, self.storage_options)
        return self._locs[""]

    def _read(self, uri: str) -> bytes:
        """Bytes of a file named relative to the root, or by an absolute path or URI."""
        root = self._root()
        if "://" not in uri and not uri.startswith("/"):
            return read_bytes(root, root.path(uri))
        protocol = get_protocol(uri)
        if protocol not in self._open():
            same = protocol == get_protocol(self.root)
            self._locs[protocol] = locate(uri, self.storage_options if same else None)
        loc = self._locs[protocol]
        return read_bytes(loc, loc.fs._strip_protocol(uri))

    def _own(self, uri: str, mode: DecodeMode) -> np.ndarray:
        """One of the dataset's own files (fg, merged: ``rgb``; alpha, trimap: ``grey``)."""
        try:
            return decode(self._read(uri), mode)
        except ValueError as exc:
            raise ValueError(f"{uri} does not decode: {exc}") from None

    def _rgb(self, uri: str) -> np.ndarray:
        return self._own(uri, "rgb")

    def _gray(self, uri: str) -> np.ndarray:
        return self._own(uri, "grey")

    def _background(self, uri: str) -> np.ndarray:
        """A background as the build read it: copied or listed files are the user's own, in any
        format (EXIF, 16-bit, palette ...), so they go through ingest's decoder, not the codec."""
        if uri in self._bg_cache:
            self._bg_cache.move_to_end(uri)
            return self._bg_cache[uri]
        decoded = decode_image(self._read(uri), name=uri)
        if decoded.image is None:
            raise ValueError(f"{uri} does not decode: {decoded.detail}")
        image = decoded.image
        self._bg_cache[uri] = image
        if len(self._bg_cache) > _BACKGROUND_CACHE:
            self._bg_cache.popitem(last=False)
        return image


def _mirror(array: np.ndarray) -> np.ndarray:
    """Left-right flip as a contiguous copy (OpenCV refuses negative strides)."""
    return np.ascontiguousarray(array[:, ::-1])


def _partial(alpha: np.ndarray) -> np.ndarray:
    """Pixels to centre a crop on: 0 < α < 255, or the edge pixels of a hard 0/255 alpha."""
    partial = (alpha > 0) & (alpha < 255)
    return partial if partial.any() else augment.trimap_from_alpha(alpha, 1, 1) == augment.UNKNOWN


def _trimap_levels(trimap: np.ndarray) -> np.ndarray:
    """0/128/255 → 0/0.5/1 (float32)."""
    return np.where(trimap == 255, 1.0, np.where(trimap == 0, 0.0, 0.5)).astype(np.float32)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """HxW or HxWxC float32 → CxHxW tensor (owning its memory, so batches can be pinned)."""
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))
