"""Fuzzing the class-schema loader: any YAML either loads or gives a TrustmapError.

And whatever loads must be safe downstream: its names go into the QGIS styles (XML) and
the GDAL category names, which must stay well-formed, and into CSV cells, which must not
start a formula.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiles.classes import FORMULA_STARTS, ClassSchema, load_schema
from tiles.errors import TrustmapError
from tiles.qgis import _raster_style_nodes, _vector_style_nodes, style_document

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])  # fmt: skip

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-300, 300), st.integers(), st.floats(),
    st.text(max_size=8), st.sampled_from(["#1f78b4", "#GGGGGG", "water", "a\x00b", "=1+1", "@x", "-", " ", ""]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=10)  # fmt: skip


def maybe(good: st.SearchStrategy, junk: int = 25) -> st.SearchStrategy:
    return st.integers(0, junk - 1).flatmap(lambda k: values if k == 0 else good)


class_def = st.fixed_dictionaries(
    {
        "code": maybe(st.integers(0, 40)),
        "name": maybe(st.one_of(st.text("abc XYZ/<>&\"'é水", min_size=1, max_size=8), st.text(min_size=1, max_size=8))),
        "color": maybe(st.from_regex(r"\A#[0-9a-fA-F]{6}\Z")),
    },
    optional={"colour": st.just("#000000"), "label": values},
)
schemas = st.fixed_dictionaries(
    {"classes": maybe(st.lists(maybe(class_def), min_size=1, max_size=4))},
    optional={"ignore": maybe(st.integers(0, 255)), "extra": values},
)
schema_texts = schemas.map(lambda d: yaml.safe_dump(d, allow_unicode=True))
yaml_texts = st.one_of(
    schema_texts,
    schema_texts,
    schema_texts,
    values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.text(max_size=60),
    st.sampled_from(["classes: 2001-02-30", "classes: !!python/object:os.system ls", "a: &a [*a]", "{", "\t",
                     "classes: [{code: 1, name: x, color: '#000000'}]\nclasses: []", "? [a]\n: b"]),
)  # fmt: skip


def _check_loaded(schema: ClassSchema) -> None:
    for nodes in (_raster_style_nodes(schema), _vector_style_nodes(schema)):
        ET.fromstring(style_document(nodes).encode("utf-8"))  # the .qml is well-formed XML
    for name in schema.names:
        assert name.lstrip()[:1] not in FORMULA_STARTS
        el = ET.Element("Category")
        el.text = name
        ET.fromstring(ET.tostring(el, encoding="unicode"))  # XML 1.0 can hold it (.aux.xml, .qgs)


def _load(path) -> ClassSchema | None:
    try:
        return load_schema(path)
    except TrustmapError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        assert str(path) in str(exc), "the message names the file"
        return None


@SETTINGS
@given(yaml_texts)
def test_any_yaml_loads_or_is_a_one_line_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("schema") / "classes.yaml"
    path.write_text(text, encoding="utf-8")
    schema = _load(path)
    if schema is not None:
        _check_loaded(schema)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=40))
def test_any_bytes_load_or_are_a_one_line_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("schema") / "classes.yaml"
    path.write_bytes(data)
    schema = _load(path)
    if schema is not None:
        _check_loaded(schema)


def test_unknown_key_is_named_not_the_missing_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("classes: [{code: 1, name: water, colour: '#1f78b4'}]\n")
    try:
        load_schema(path)
    except TrustmapError as exc:
        assert "classes[0].colour" in str(exc) and "did you mean 'color'" in str(exc)
    else:
        raise AssertionError("a misspelt key must be an error")
