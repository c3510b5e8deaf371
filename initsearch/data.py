"""Data: CIFAR-10 decoded once into uint8 tensors, split, and augmented on the device.

Two on-disk layouts are read:

* ImageFolder: ``<dir>/train/<class>/*.jpg`` and ``<dir>/test/<class>/*.jpg`` (class folders in
  the standard label order, which for CIFAR-10 is alphabetical);
* the original python batches that ``torchvision.datasets.CIFAR10`` reads (``cifar-10-batches-py``),
  downloaded by torchvision when no directory is given and the machine is online.

Decoding 60k JPEGs takes seconds, so the decoded arrays are cached under
``$INITSEARCH_CACHE`` (default ``~/.cache/initsearch``), keyed by the source directory.
Training never touches a DataLoader: the split lives as one uint8 tensor on the training device
(once per worker process), and each minibatch is standardized and augmented on the fly with
crops and flips drawn for the whole epoch at once (airbench style).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from initsearch.errors import UsageError

DATASETS = ("cifar10",)
DATA_ENV = "INITSEARCH_DATA"
EXAMPLE_INPUT = (3, 32, 32)  #: one image's shape (CIFAR-10): what models are probed and traced with
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set, used to standardize inputs.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 ``(N, 3, H, W)`` with int64 labels ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.x[index], self.y[index])


@dataclass(frozen=True)
class Splits:
    """Four disjoint sets: what a trial trains on (``train``); what the search selects and
    prunes on (``val``, the *select* split); what the confirmation decides on (``confirm``,
    never seen by the search); and what is finally reported (``test``, never used to decide).
    ``fingerprint``: SHA-256 of every image and label (computed once, on construction): the
    data a result was trained on, for the result cache and for keeping the splits on a device
    once per process."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    num_classes: int
    confirm: ImageSet = field(default_factory=lambda: ImageSet(torch.zeros(0, 3, 32, 32, dtype=torch.uint8),
                                                               torch.zeros(0, dtype=torch.int64)))
    fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(str(self.num_classes).encode())
        for part in (self.train, self.val, self.confirm, self.test):
            for t in (part.x, part.y):
                t = t.contiguous()
                digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
                digest.update(t.view(torch.uint8).numpy().data)  # no copy: the bytes themselves
        object.__setattr__(self, "fingerprint", digest.hexdigest())


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory from the argument, else ``$INITSEARCH_DATA``, else None (download)."""
    chosen = data_dir or os.environ.get(DATA_ENV)
    return Path(chosen).expanduser().resolve() if chosen else None


def load_cifar10(data_dir: str | os.PathLike | None = None) -> tuple[ImageSet, ImageSet]:
    """Return the (train, test) sets of CIFAR-10, decoding once and caching the result.

    Raises:
        UsageError: if the directory is missing, unreadable, or holds neither layout.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        return _download_cifar10()
    if not root.is_dir():
        raise UsageError(f"data directory {root} does not exist; pass --data DIR "
                         f"(or set {DATA_ENV}) pointing at CIFAR-10")
    cache = _cache_path(root)
    if cache.exists():
        try:
            # mmap: only the pages of the images a split takes are read from disk
            train, test = torch.load(cache, weights_only=True, mmap=True)
            return ImageSet(*train), ImageSet(*test)
        except Exception:  # a truncated or stale cache is rebuilt, not fatal
            cache.unlink(missing_ok=True)
    try:
        if (root / "train").is_dir() and (root / "test").is_dir():
            train, test = _read_image_folder(root / "train"), _read_image_folder(root / "test")
        elif (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").exists():
            train, test = _read_python_batches(root)
        else:
            raise UsageError(f"{root} holds no CIFAR-10: expected train/<class>/*.jpg and "
                             f"test/<class>/*.jpg, or cifar-10-batches-py/; fix --data or {DATA_ENV}")
    except (OSError, RuntimeError, ValueError) as exc:  # unreadable, not an image, not 32x32
        raise UsageError(f"cannot read CIFAR-10 from {root} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}); fix or replace the files") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(((train.x, train.y), (test.x, test.y)), tmp)
    tmp.replace(cache)  # atomic: a concurrent reader never sees half a file
    return train, test


def make_splits(train: ImageSet, test: ImageSet, *, train_size: int | None, val_size: int,
                test_size: int | None, split_seed: int, confirm_size: int = 0,
                num_classes: int = 10) -> Splits:
    """Carve the select (``val_size``) and confirm (``confirm_size``) splits out of the training
    set, then take ``train_size`` training images from the rest; subsample test.

    The permutation depends only on ``split_seed``, so every trial of a study sees the same
    images: differences between trials come from the init, not from the data. ``train_size``
    is the most any trial trains on (a confirmation may train on more images than the search,
    :meth:`~initsearch.protocol.Protocol.split_sizes`); a trial takes its first images.
    """
    if val_size + confirm_size >= len(train):
        raise UsageError(f"val_size {val_size} + confirm_size {confirm_size} leave no training "
                         f"images (the training set has {len(train)}); lower them in the protocol")
    gen = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(train), generator=gen)
    held = val_size + confirm_size
    val_idx, confirm_idx, rest = order[:val_size], order[val_size:held], order[held:]
    train_idx = rest[:train_size] if train_size else rest
    test_idx = torch.randperm(len(test), generator=gen)[:test_size] if test_size else None
    return Splits(train=train.take(train_idx), val=train.take(val_idx),
                  test=test.take(test_idx) if test_idx is not None else test,
                  num_classes=num_classes, confirm=train.take(confirm_idx))


def load_splits(dataset: str, data_dir: str | os.PathLike | None, **split_args) -> Splits:
    """Load ``dataset`` and split it as a protocol asks (see :func:`make_splits`)."""
    if dataset != "cifar10":
        raise UsageError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    train, test = load_cifar10(data_dir)
    return make_splits(train, test, num_classes=len(CIFAR10_CLASSES), **split_args)


def standardize(x: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """uint8 images to float, zero mean and unit variance per channel."""
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1) * 255
    out = (x.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


@dataclass(frozen=True)
class Augment:
    """One epoch's random crops and flips, drawn for every image at once: ``flip`` (bool per
    image, or None), ``dy``/``dx`` (the crop's offset in the padded image, or None), ``pad``."""

    pad: int
    flip: torch.Tensor | None
    dy: torch.Tensor | None
    dx: torch.Tensor | None

    @classmethod
    def draw(cls, n: int, *, pad: int, flip: bool, generator: torch.Generator) -> "Augment":
        """Draws for ``n`` images (flips first, then offsets: the order fixes the RNG stream)."""
        dev = generator.device
        mask = torch.rand(n, device=dev, generator=generator) < 0.5 if flip else None
        dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator) if pad else None
        dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator) if pad else None
        return cls(pad, mask, dy, dx)

    def take(self, index: torch.Tensor) -> "Augment":
        """The draws of the images ``index`` picks (a minibatch)."""
        pick = lambda t: None if t is None else t[index]
        return Augment(self.pad, pick(self.flip), pick(self.dy), pick(self.dx))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Flip, then crop a shifted window of the zero-padded image, per image, in two batched ops."""
        n, _, h, w = x.shape
        if self.flip is not None:
            x = torch.where(self.flip.view(n, 1, 1, 1), x.flip(3), x)
        if self.pad:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            rows = (self.dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
            cols = (self.dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
            batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
            chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
            x = padded[batch, chans, rows, cols]  # gather one shifted window per image
        return x


def cache_root() -> Path:
    """Where initsearch keeps derived files: ``$INITSEARCH_CACHE``, else ~/.cache/initsearch."""
    return Path(os.environ.get("INITSEARCH_CACHE", Path.home() / ".cache" / "initsearch"))


def _cache_path(root: Path) -> Path:
    key = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return cache_root() / f"cifar10-{key}.pt"


def _read_image_folder(folder: Path) -> ImageSet:
    from PIL import Image  # torchvision's dependency; imported here to keep start-up light

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if tuple(classes) != CIFAR10_CLASSES:
        raise UsageError(f"{folder} has class folders {classes}, not the ten CIFAR-10 classes; "
                         "point --data at the directory that holds train/ and test/")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as img:
                images.append(torch.frombuffer(bytearray(img.convert("RGB").tobytes()),
                                               dtype=torch.uint8))
            labels.append(label)
    x = torch.stack(images).view(len(images), 32, 32, 3).permute(0, 3, 1, 2).contiguous()
    return ImageSet(x, torch.tensor(labels, dtype=torch.int64))


def _read_python_batches(root: Path) -> tuple[ImageSet, ImageSet]:
    from torchvision.datasets import CIFAR10

    # torchvision wants the folder that holds cifar-10-batches-py/
    parent = root if (root / "cifar-10-batches-py").is_dir() else root.parent
    return tuple(_from_torchvision(CIFAR10(str(parent), train=t, download=False))
                 for t in (True, False))


def _download_cifar10() -> tuple[ImageSet, ImageSet]:
    from torchvision.datasets import CIFAR10

    try:
        sets = [CIFAR10(str(cache_root() / "download"), train=t, download=True) for t in (True, False)]
    except Exception as exc:  # no network, proxy, disk full: all mean "point us at a copy"
        raise UsageError(f"could not download CIFAR-10 ({type(exc).__name__}); pass --data DIR "
                         f"or set {DATA_ENV} to a local copy") from None
    return tuple(_from_torchvision(s) for s in sets)


def _from_torchvision(ds) -> ImageSet:
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(x, torch.tensor(ds.targets, dtype=torch.int64))
