"""Annotation readers: every supported dataset format becomes ``(records, classes)``.

A record is ``VideoRecord(path, label)`` with ``path`` already joined to the data root and ``label`` an
``int`` in ``[0, len(classes))``. ``classes`` is the list of class names, index = label; models store it
so that predictions can be named later.

Formats (``fmt``):

``list``
    One video per line, ``path label`` (whitespace) or ``path,label`` (comma), paths relative to
    ``root``. The label is always the *last* field, so paths may contain spaces (either separator) and
    commas (whitespace separator, or a quoted CSV field). Blank lines and ``#`` comments are skipped; a
    header line such as ``path,label`` is allowed on line 1. This is the VideoMAE / VideoMamba list
    format, which VideoMamba also uses for Breakfast and COIN.
``kinetics_csv``
    The official Kinetics CSV, header ``label,youtube_id,time_start,time_end,split[,is_cc]``. The file of
    a row is ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``, looked up under ``root/<label>/``
    (also with spaces replaced by ``_``) and directly under ``root``.
``ssv2``
    Something-Something V2: a JSON list of ``{"id", "label", "template", "placeholders"}`` plus
    ``labels.json`` mapping each template with its brackets removed to a class index. Videos are
    ``root/<id>.webm``.
``breakfast``
    The Breakfast split CSV that VideoMamba's DATASET.md points to (ViS4mer's ``data/Breakfast``): header
    ``file_name,duration,action,class_id``; ``P03-cam01-P03_cereals`` is the video
    ``root/P03/cam01/P03_cereals.avi`` (dashes are directory separators in the original release).
``coin``
    The official ``COIN.json``: ``{"database": {youtube_id: {"recipe_type", "class", "subset", ...}}}``;
    the label is ``recipe_type`` (180 tasks), the video ``root/<recipe_type>/<youtube_id>.mp4`` or
    ``root/<youtube_id>.mp4``; ``split`` picks ``"training"`` or ``"testing"``.
``folder``
    ``root/<class name>/**/<video>``: classes are the sorted sub-directory names.

Every malformed line or entry raises :class:`AnnotationError` naming the file and the line number (or
the JSON index / key).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

__all__ = [
    "VideoRecord",
    "Annotations",
    "AnnotationError",
    "FORMATS",
    "VIDEO_EXTENSIONS",
    "BREAKFAST_CLASSES",
    "read_annotations",
    "read_list",
    "read_kinetics_csv",
    "read_ssv2",
    "read_breakfast",
    "read_coin",
    "read_folder",
    "read_class_names",
    "detect_format",
]

FORMATS = ("list", "kinetics_csv", "ssv2", "breakfast", "coin", "folder")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv")

# Breakfast's ten dishes, in the class_id order of the split files.
BREAKFAST_CLASSES = (
    "cereals", "coffee", "tea", "pancake", "friedegg",
    "scrambledegg", "sandwich", "juice", "milk", "salat",
)

_KINETICS_HEADER = ("label", "youtube_id", "time_start", "time_end")
_BREAKFAST_HEADER = ("file_name", "duration", "action", "class_id")


class VideoRecord(NamedTuple):
    """One labelled video: ``path`` (joined to the root) and an integer ``label``."""

    path: str
    label: int


class Annotations(NamedTuple):
    """What every reader returns: ``records`` and ``classes`` (class name of label ``i`` at index ``i``)."""

    records: list[VideoRecord]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class AnnotationError(ValueError):
    """A malformed annotation: the message names the file and where in it (line or JSON entry)."""

    def __init__(self, file, where: str, reason: str):
        super().__init__(file, where, reason)
        self.file = str(file)
        self.where = where
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}, {self.where}: {self.reason}"


# --------------------------------------------------------------------------------------------- helpers


def _parse_label(text: str) -> int | None:
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value


def _first_existing(candidates: Sequence[str]) -> str:
    """The first candidate that exists, else the first one: a missing video is not an annotation error;
    it fails at decode time and goes through the corrupt-video policy (counted, never replaced)."""
    for c in candidates:
        if os.path.exists(c):
            return c
    return candidates[0]


def _with_extensions(stem: str, preferred: str, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[str]:
    exts = [preferred] + [e for e in extensions if e != preferred]
    return [stem + e for e in exts]


def read_class_names(source) -> list[str]:
    """Class names from a list, a text file (one name per line), or a JSON file.

    JSON may be a list of names or a ``{name: index}`` mapping (SSv2's ``labels.json`` style).
    """
    if source is None:
        raise ValueError("no class names given")
    if not isinstance(source, (str, os.PathLike)):
        return [str(c) for c in source]
    path = Path(source)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if isinstance(data, list):
            return [str(c) for c in data]
        if isinstance(data, dict):
            return _names_from_mapping(data, path)
        raise AnnotationError(path, "top level", "expected a list of names or a {name: index} mapping")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [n for n in names if n]


def _names_from_mapping(mapping: dict, file) -> list[str]:
    by_index: dict[int, str] = {}
    for name, idx in mapping.items():
        i = _parse_label(str(idx))
        if i is None or i < 0:
            raise AnnotationError(file, f"entry {name!r}", f"class index {idx!r} is not a non-negative integer")
        if i in by_index:
            raise AnnotationError(file, f"entry {name!r}", f"class index {i} is used twice")
        by_index[i] = str(name)
    n = max(by_index) + 1 if by_index else 0
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise AnnotationError(file, "top level", f"class indices {missing[:5]} are missing")
    return [by_index[i] for i in range(n)]


def _check_labels(records: list[VideoRecord], classes: Sequence[str], file) -> None:
    for r in records:
        if r.label >= len(classes):
            raise AnnotationError(file, "labels", f"label {r.label} is out of range for {len(classes)} classes")


def _default_root(path: Path, root) -> Path:
    return Path(root) if root is not None else path.parent


# ------------------------------------------------------------------------------------------- readers


def read_list(path, root=None, *, classes=None) -> Annotations:
    """``path label`` / ``path,label`` lines; paths are relative to ``root`` (default: the list's folder).

    Without ``classes`` the names are ``"0" … str(max label)``.
    """
    path = Path(path)
    root = _default_root(path, root)
    records: list[VideoRecord] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            rel, label = _split_list_line(line)
            if label is None:
                if lineno == 1 and _looks_like_header(line):
                    continue
                raise AnnotationError(path, f"line {lineno}",
                                      f"expected 'path label' or 'path,label' with an integer label, got {line!r}")
            if not rel:
                raise AnnotationError(path, f"line {lineno}", f"empty path in {line!r}")
            if label < 0:
                raise AnnotationError(path, f"line {lineno}", f"negative label {label} in {line!r}")
            records.append(VideoRecord(os.path.join(root, rel), label))
    if classes is not None:
        names = read_class_names(classes)
        _check_labels(records, names, path)
    else:
        n = max((r.label for r in records), default=-1) + 1
        names = [str(i) for i in range(n)]
    return Annotations(records, names)


def _split_list_line(line: str) -> tuple[str, int | None]:
    if line.startswith('"'):
        fields = next(csv.reader([line]))
        if len(fields) == 2:
            return fields[0], _parse_label(fields[1])
        return line, None
    # The label is the last field: try the comma form first, then whitespace, so that both
    # "my video.mp4,3" and "a,b.mp4 3" read correctly.
    if "," in line:
        head, tail = line.rsplit(",", 1)
        label = _parse_label(tail)
        if label is not None:
            return head.strip(), label
    parts = line.rsplit(None, 1)
    if len(parts) == 2:
        label = _parse_label(parts[1])
        if label is not None:
            return parts[0].strip(), label
    return line, None


def _looks_like_header(line: str) -> bool:
    fields = [f.strip().lower() for f in line.replace(",", " ").split()]
    return len(fields) >= 2 and all(f.replace("_", "").isalpha() for f in fields)


def read_kinetics_csv(path, root=None, *, classes=None) -> Annotations:
    """The official Kinetics CSV. Class names: ``classes`` if given (pass the training set's names when
    reading val/test so that indices agree), else the sorted labels found in this file."""
    path = Path(path)
    root = _default_root(path, root)
    rows: list[tuple[int, str, str]] = []  # (line, label name, file name)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [h for h in _KINETICS_HEADER if h not in header]
        if missing:
            raise AnnotationError(path, "line 1",
                                  f"header lacks {missing}; expected {','.join(_KINETICS_HEADER)},split")
        reader.fieldnames = header
        for row in reader:
            lineno = reader.line_num
            if None in row or any(row.get(h) is None for h in _KINETICS_HEADER):
                raise AnnotationError(path, f"line {lineno}", f"expected {len(header)} fields, got {row}")
            label = row["label"].strip()
            yid = row["youtube_id"].strip()
            try:
                start = int(float(row["time_start"]))
                end = int(float(row["time_end"]))
            except ValueError:
                raise AnnotationError(path, f"line {lineno}", "time_start/time_end must be numbers, got "
                                      f"{row['time_start']!r}, {row['time_end']!r}") from None
            if not label or not yid:
                raise AnnotationError(path, f"line {lineno}", "empty label or youtube_id")
            rows.append((lineno, label, f"{yid}_{start:06d}_{end:06d}"))
    names = read_class_names(classes) if classes is not None else sorted({r[1] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    records = []
    for lineno, label, stem in rows:
        if label not in index:
            raise AnnotationError(path, f"line {lineno}",
                                  f"label {label!r} is not among the {len(names)} given classes")
        folders = [os.path.join(root, label), os.path.join(root, label.replace(" ", "_")), str(root)]
        candidates: list[str] = []
        for folder in dict.fromkeys(folders):
            candidates += _with_extensions(os.path.join(folder, stem), ".mp4")
        records.append(VideoRecord(_first_existing(candidates), index[label]))
    return Annotations(records, names)


def read_ssv2(path, root=None, *, labels=None) -> Annotations:
    """Something-Something V2 JSON; ``labels`` is ``labels.json`` (default: beside ``path``)."""
    path = Path(path)
    root = _default_root(path, root)
    labels_path = Path(labels) if labels is not None else path.parent / "labels.json"
    if not labels_path.exists():
        raise FileNotFoundError(f"{labels_path}: SSv2 labels.json not found; pass labels=PATH")
    mapping = json.loads(labels_path.read_text(encoding="utf-8-sig"))
    if not isinstance(mapping, dict):
        raise AnnotationError(labels_path, "top level", "expected a {template: index} mapping")
    names = _names_from_mapping(mapping, labels_path)
    index = {n: i for i, n in enumerate(names)}
    entries = json.loads(path.read_text(encoding="utf-8-sig"))
    if not isinstance(entries, list):
        raise AnnotationError(path, "top level", "expected a JSON list of {id, label, template, placeholders}")
    records = []
    for i, e in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(e, dict) or "id" not in e:
            raise AnnotationError(path, where, f"expected an object with 'id', got {e!r}"[:200])
        if "template" not in e:
            raise AnnotationError(path, where, f"video {e['id']!r} has no 'template' (unlabelled test split?)")
        template = str(e["template"]).replace("[", "").replace("]", "")
        if template not in index:
            raise AnnotationError(path, where, f"template {template!r} is not in {labels_path.name}")
        stem = os.path.join(root, str(e["id"]))
        records.append(VideoRecord(_first_existing(_with_extensions(stem, ".webm")), index[template]))
    return Annotations(records, names)


def read_breakfast(path, root=None, *, classes=None) -> Annotations:
    """Breakfast split CSV (``file_name,duration,action,class_id``). Class names come from the
    ``action`` column (falling back to :data:`BREAKFAST_CLASSES` for ids absent from the file)."""
    path = Path(path)
    root = _default_root(path, root)
    records = []
    seen: dict[int, str] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if tuple(header[:4]) != _BREAKFAST_HEADER:
            raise AnnotationError(path, "line 1",
                                  f"expected header {','.join(_BREAKFAST_HEADER)}, got {','.join(header)!r}")
        for fields in reader:
            lineno = reader.line_num
            if not fields or not "".join(fields).strip():
                continue
            if len(fields) != 4:
                raise AnnotationError(path, f"line {lineno}", f"expected 4 fields, got {len(fields)}: {fields}")
            name, _, action, cid = (x.strip() for x in fields)
            label = _parse_label(cid)
            if not name or label is None or label < 0:
                raise AnnotationError(path, f"line {lineno}", f"bad file_name or class_id in {fields}")
            if seen.setdefault(label, action) != action:
                raise AnnotationError(path, f"line {lineno}",
                                      f"class_id {label} is {action!r} here but {seen[label]!r} earlier")
            stem_nested = os.path.join(root, *name.split("-"))
            stem_flat = os.path.join(root, name)
            candidates = _with_extensions(stem_nested, ".avi") + _with_extensions(stem_flat, ".avi")
            records.append(VideoRecord(_first_existing(candidates), label))
    if classes is not None:
        names = read_class_names(classes)
    else:
        n = max([len(BREAKFAST_CLASSES)] + [k + 1 for k in seen])
        names = [seen.get(i, BREAKFAST_CLASSES[i] if i < len(BREAKFAST_CLASSES) else str(i)) for i in range(n)]
    _check_labels(records, names, path)
    return Annotations(records, names)


_COIN_SPLITS = {"train": "training", "training": "training", "test": "testing", "testing": "testing",
                "val": "testing", "validation": "testing"}


def read_coin(path, root=None, *, split=None) -> Annotations:
    """Official ``COIN.json``; ``split`` is ``"training"``/``"train"`` or ``"testing"``/``"test"``.

    Labels are COIN's ``recipe_type`` ids, so train and test agree without a shared class list; names
    come from the ``class`` field across the whole database.
    """
    path = Path(path)
    root = _default_root(path, root)
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise AnnotationError(path, "top level", "expected {'database': {youtube_id: {...}}}")
    subsets = sorted({str(v.get("subset")) for v in db.values() if isinstance(v, dict)})
    if split is None:
        if len(subsets) > 1:
            raise ValueError(f"{path}: holds subsets {subsets}; pass split='training' or split='testing'")
        wanted = None
    else:
        wanted = _COIN_SPLITS.get(str(split).lower(), str(split))
    names: dict[int, str] = {}
    records = []
    for i, (vid, e) in enumerate(db.items()):
        where = f"entry {i} ({vid!r})"
        if not isinstance(e, dict) or "recipe_type" not in e:
            raise AnnotationError(path, where, "expected an object with 'recipe_type'")
        label = _parse_label(str(e["recipe_type"]))
        if label is None or label < 0:
            raise AnnotationError(path, where, f"recipe_type {e['recipe_type']!r} is not a non-negative integer")
        name = str(e.get("class", label))
        if names.setdefault(label, name) != name:
            raise AnnotationError(path, where, f"recipe_type {label} is {name!r} here but {names[label]!r} earlier")
        if wanted is not None and e.get("subset") != wanted:
            continue
        candidates = (_with_extensions(os.path.join(root, str(label), vid), ".mp4")
                      + _with_extensions(os.path.join(root, vid), ".mp4"))
        records.append(VideoRecord(_first_existing(candidates), label))
    n = max(names) + 1 if names else 0
    return Annotations(records, [names.get(i, str(i)) for i in range(n)])


def read_folder(root, *, classes=None, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> Annotations:
    """``root/<class>/**/<video>``; classes are the sorted sub-directories (or ``classes``, fixing the order)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = read_class_names(classes) if classes is not None else dirs
    index = {n: i for i, n in enumerate(names)}
    exts = {e.lower() for e in extensions}
    records = []
    for d in dirs:
        if d not in index:
            raise AnnotationError(root, f"folder {d!r}", f"not among the {len(names)} given classes")
        files = sorted(p for p in (root / d).rglob("*") if p.is_file() and p.suffix.lower() in exts)
        records += [VideoRecord(str(p), index[d]) for p in files]
    return Annotations(records, list(names))


# ------------------------------------------------------------------------------------------ dispatch


def detect_format(path) -> str:
    """Guess the format from the path: a directory, a JSON shape, or a CSV header."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if isinstance(data, dict) and "database" in data:
            return "coin"
        if isinstance(data, list):
            return "ssv2"
        raise AnnotationError(path, "top level", "unknown JSON annotation format (expected SSv2 list or COIN database)")
    with open(path, encoding="utf-8-sig") as f:
        first = ""
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                first = line.strip()
                break
    header = tuple(h.strip().lower() for h in first.split(","))
    if header[:4] == _KINETICS_HEADER:
        return "kinetics_csv"
    if header[:4] == _BREAKFAST_HEADER:
        return "breakfast"
    return "list"


def read_annotations(path, fmt: str = "auto", root=None, *, classes=None, labels=None, split=None) -> Annotations:
    """Read any supported annotation file into ``Annotations(records, classes)``.

    Args:
        path: annotation file, or the class-folder tree for ``fmt="folder"`` (``root`` is then unused).
        fmt: ``"auto"`` or one of :data:`FORMATS`.
        root: directory the video paths are relative to (default: the annotation file's folder).
        classes: class names (list, text file or JSON) fixing names and, for string-labelled formats
            (Kinetics, folder), the label order. Use the training set's names for val/test.
        labels: SSv2 ``labels.json`` (default: beside ``path``).
        split: COIN subset (``"training"``/``"testing"``).
    """
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "list":
        return read_list(path, root, classes=classes)
    if fmt == "kinetics_csv":
        return read_kinetics_csv(path, root, classes=classes)
    if fmt == "ssv2":
        return read_ssv2(path, root, labels=labels)
    if fmt == "breakfast":
        return read_breakfast(path, root, classes=classes)
    if fmt == "coin":
        return read_coin(path, root, split=split)
    if fmt == "folder":
        return read_folder(path, classes=classes)
    raise ValueError(f"unknown annotation format {fmt!r}; expected 'auto' or one of {FORMATS}")
