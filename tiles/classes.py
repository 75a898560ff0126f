"""Class schemas: the codes, names and colours every label raster is checked against."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tiles.config import read_yaml, validate
from tiles.errors import TrustmapError

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
#: A CSV cell starting with one of these is a formula to Excel, LibreOffice and Sheets.
FORMULA_STARTS = frozenset("=+-@")


def check_label_text(value: str, what: str = "name") -> str:
    """Refuse text that cannot go into XML, CSV or a file listing: control characters, blanks.

    Class and category names end up in ``.qml``, ``.qgs`` and ``.aux.xml`` (XML 1.0 cannot hold
    most control characters at all), in CSV files and reports.
    """
    bad = sorted({f"U+{ord(ch):04X}" for ch in value if unicodedata.category(ch) in ("Cc", "Cs", "Cn")})
    if bad:
        raise ValueError(f"{what} {value!r} contains control or invalid characters ({', '.join(bad[:5])})")
    if not value.strip():
        raise ValueError(f"{what} {value!r} is blank")
    return value


def _no_bool(value: object) -> object:
    if isinstance(value, bool):  # YAML's yes/no/true are not codes
        raise ValueError(f"must be a whole number 0..255, got {value!r}")
    return value


class ClassDef(BaseModel):
    """One land-cover (or object) class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: int = Field(ge=0, le=255, description="Pixel value in label rasters (uint8).")
    name: str = Field(min_length=1, max_length=200)
    color: str = Field(description="Display colour as #rrggbb.")

    @field_validator("code", mode="before")
    @classmethod
    def _no_bool_code(cls, value: object) -> object:
        return _no_bool(value)

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        value = check_label_text(value, "class name")
        if value.lstrip()[:1] in FORMULA_STARTS:
            raise ValueError(
                f"class name {value!r} starts with {value.lstrip()[0]!r}: spreadsheets opening the "
                "change records (CSV) would run it as a formula"
            )
        return value

    @field_validator("color")
    @classmethod
    def _hex_color(cls, value: str) -> str:
        if not _HEX.match(value):
            raise ValueError(f"colour {value!r} is not of the form #rrggbb")
        return value.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class ClassSchema(BaseModel):
    """An ordered list of classes plus the code that means "no label"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[ClassDef] = Field(min_length=1)
    ignore: int = Field(default=255, ge=0, le=255)

    @field_validator("ignore", mode="before")
    @classmethod
    def _no_bool_ignore(cls, value: object) -> object:
        return _no_bool(value)

    @model_validator(mode="after")
    def _unique(self) -> ClassSchema:
        codes = [c.code for c in self.classes]
        names = [c.name for c in self.classes]
        dup = {c for c in codes if codes.count(c) > 1}
        if dup:
            raise ValueError(f"duplicate class code(s) {sorted(dup)}")
        dupn = {n for n in names if names.count(n) > 1}
        if dupn:
            raise ValueError(f"duplicate class name(s) {sorted(dupn)}")
        if self.ignore in codes:
            raise ValueError(f"ignore code {self.ignore} is also a class code")
        return self

    # --- lookups -------------------------------------------------------------------------
    @property
    def codes(self) -> list[int]:
        return [c.code for c in self.classes]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def by_code(self, code: int) -> ClassDef:
        for c in self.classes:
            if c.code == code:
                return c
        raise KeyError(code)

    def code_for(self, value: int | str) -> int:
        """Map a class given as code or name (case-insensitive) to its code."""
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            for c in self.classes:
                if c.name.lower() == value.strip().lower():
                    return c.code
            raise KeyError(value)
        code = int(value)
        if code not in self.codes:
            raise KeyError(value)
        return code

    def code_to_index(self) -> np.ndarray:
        """A 256-entry lookup from code to contiguous index 0..C-1; ignore and unknown -> -1."""
        lut = np.full(256, -1, dtype=np.int16)
        for i, c in enumerate(self.classes):
            lut[c.code] = i
        return lut

    def index_to_code(self) -> np.ndarray:
        """Contiguous index 0..C-1 -> code, as uint8."""
        return np.array(self.codes, dtype=np.uint8)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A rasterio colormap: class colours, the ignore code transparent."""
        cmap = {c.code: (*c.rgb, 255) for c in self.classes}
        cmap[self.ignore] = (0, 0, 0, 0)
        return cmap

    def check_codes(self, values: np.ndarray, source: str | os.PathLike) -> None:
        """Raise if ``values`` holds a code that is neither a class nor ``ignore``."""
        present = np.unique(np.asarray(values))
        allowed = set(self.codes) | {self.ignore}
        unknown = [int(v) for v in present if int(v) not in allowed]
        if unknown:
            raise TrustmapError(
                f"unknown class code(s) {unknown[:10]}; the schema allows {sorted(self.codes)} "
                f"and ignore={self.ignore}",
                source,
            )


def load_schema(path: str | os.PathLike) -> ClassSchema:
    """Read and validate a class schema YAML; errors name the file and the key at fault."""
    path = Path(path)
    if not path.exists():
        raise TrustmapError("class schema not found", path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise TrustmapError("expected a mapping with 'classes' and 'ignore'", path)
    return validate(ClassSchema, data, path, "class schema")


def builtin_schema_path(name: str = "landcover6") -> Path:
    """Path of a schema shipped with trustmap, as package data (``tiles/schemas``: in a checkout,
    links to ``configs/classes/``, so there is one copy of each; a wheel holds the files)."""
    packaged = Path(__file__).resolve().parent / "schemas" / f"{name}.yaml"
    if packaged.exists():
        return packaged
    raise TrustmapError(f"no built-in class schema named {name!r}")
