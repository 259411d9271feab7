"""Libvirt XML as declared data, after virt-manager's virtinst: each device
is a small class whose properties are bound to XPaths relative to its own
element ("@type", "./target/@bus", "./name"), emitted in declaration order
so the output is stable and minimal (an unset property writes nothing).

Only the XPath forms libvirt domain XML needs are supported: child element
steps, then optionally one attribute step.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, ClassVar


class Prop:
    """A value at an XPath: text of an element, or an attribute. kind=bool
    makes a presence flag (`<acpi/>`), kind=int parses numbers back."""

    def __init__(self, xpath: str, kind: type = str) -> None:
        self.xpath = xpath
        self.kind = kind
        self.name = ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj._values.get(self.name)

    def __set__(self, obj, value) -> None:
        obj._values[self.name] = value

    def split(self) -> tuple[list[str], str | None]:
        steps = [s for s in self.xpath.split("/") if s not in ("", ".")]
        attr = steps.pop()[1:] if steps and steps[-1].startswith("@") else None
        return steps, attr


class Children:
    """A list of XMLObjects placed under `xpath` ("./devices"), or one
    object when single=True."""

    def __init__(self, cls: type[XMLObject], xpath: str = ".", single=False) -> None:
        self.cls = cls
        self.xpath = xpath
        self.single = single
        self.name = ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if self.name not in obj._values:
            obj._values[self.name] = None if self.single else []
        return obj._values[self.name]

    def __set__(self, obj, value) -> None:
        obj._values[self.name] = value


def _element(parent: ET.Element, steps: list[str]) -> ET.Element:
    for tag in steps:
        found = parent.find(tag)
        parent = found if found is not None else ET.SubElement(parent, tag)
    return parent


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class XMLObject:
    TAG: ClassVar[str] = ""
    _fields: ClassVar[list[Prop | Children]] = []

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        fields: list[Prop | Children] = []
        for klass in reversed(cls.__mro__):
            fields += [
                v for v in vars(klass).values() if isinstance(v, Prop | Children)
            ]
        cls._fields = fields

    def __init__(self, **values) -> None:
        self._values: dict[str, Any] = {}
        for key, value in values.items():
            if not isinstance(getattr(type(self), key, None), Prop | Children):
                raise AttributeError(f"{type(self).__name__} has no property {key}")
            setattr(self, key, value)

    def to_element(self) -> ET.Element:
        root = ET.Element(self.TAG)
        for f in self._fields:
            value = f.__get__(self)
            if isinstance(f, Children):
                items = [value] if f.single else value
                if items and items != [None]:
                    parent = _element(root, Prop(f.xpath).split()[0])
                    parent.extend(item.to_element() for item in items)
                continue
            if value is None or (f.kind is bool and not value):
                continue
            steps, attr = f.split()
            el = _element(root, steps)
            if attr:
                el.set(attr, _format(value))
            elif f.kind is not bool:
                el.text = _format(value)
        return root

    @classmethod
    def from_element(cls, el: ET.Element) -> XMLObject:
        obj = cls()
        for f in cls._fields:
            if isinstance(f, Children):
                path = "/".join([f.xpath, f.cls.TAG])
                items = [f.cls.from_element(e) for e in el.findall(path)]
                f.__set__(obj, (items[0] if items else None) if f.single else items)
                continue
            steps, attr = f.split()
            node = el.find("/".join(["."] + steps)) if steps else el
            if node is None:
                continue
            raw = node.get(attr) if attr else (True if f.kind is bool else node.text)
            if raw is None:
                continue
            if f.kind is int:
                raw = int(raw)
            elif f.kind is bool and attr:
                raw = raw == "yes"
            f.__set__(obj, raw)
        return obj

    def to_xml(self) -> str:
        el = self.to_element()
        ET.indent(el, "  ")
        # libvirt writes empty elements as <acpi/>; so does ferry, for diffs
        return ET.tostring(el, encoding="unicode").replace(" />", "/>") + "\n"

    @classmethod
    def from_xml(cls, text: str) -> XMLObject:
        return cls.from_element(ET.fromstring(text))
