"""A bundle's labels file, read the same way by the agent and the cloud: which name goes with
which class id, and how a model's output class index becomes that id.

Three formats (the first non-empty line decides):

* **one label per line** (``imagenet_labels.txt``, what ``edgefleet-compile`` writes): line
  ``i`` names class ``i``; output index = class id.
* **``id name`` per line** (pycoral's ``"0  person"``, ``"12: stop sign"``): explicit ids, gaps
  allowed; output index = class id (pycoral's files are written that way).
* **a protobuf text label map** (TensorFlow Object Detection API, ``traffic_label_map.pbtxt``):
  ``item { name: "sedan" id: 1 display_name: "..." }``; ``display_name`` is preferred over
  ``name``. Its ids start at 1 because 0 is the background, which ``TFLite_Detection_PostProcess``
  drops: output class ``k`` is id ``k + 1`` (``offset`` 1), the Object Detection API's own rule.

A file that is none of these (a ``.pbtxt`` that does not parse, two names for one id) raises
:class:`BadPayload` naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import BadPayload

WHAT = "labels file"
_ID_LINE = re.compile(r"^\s*(\d+)\s*[:\s]\s*(\S.*?)\s*$")
_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_PB_FIELD = re.compile(r'(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[-\w.]+)')


@dataclass(frozen=True)
class LabelMap:
    """Class id -> name; ``offset`` is added to a detector's output class index to get the id."""

    names: dict[int, str] = field(default_factory=dict)
    offset: int = 0
    format: str = "lines"  # lines | ids | pbtxt

    def __len__(self) -> int:
        return len(self.names)

    def name(self, class_id: int) -> str:
        """The class's name, or its id as text when the file does not name it."""
        return self.names.get(class_id, str(class_id))

    def as_list(self) -> list[str]:
        """Names indexed by class id (a gap is its id as text): what ``top`` ranks against."""
        if not self.names:
            return []
        return [self.name(i) for i in range(max(self.names) + 1)]


def parse_labels(text: str) -> LabelMap:
    """The label map in ``text`` (any of the three formats)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return LabelMap()
    if lines[0].replace(" ", "").startswith("item{"):
        return _pbtxt(text)
    matches = [_ID_LINE.match(ln) for ln in lines]
    if all(m is not None for m in matches) and len(lines) > 1:
        names: dict[int, str] = {}
        for ln, m in zip(lines, matches, strict=True):
            assert m is not None
            i = int(m.group(1))
            if i in names:
                raise BadPayload(WHAT, f"id {i} is named twice ({names[i]!r} and line {ln!r:.60})")
            names[i] = m.group(2)
        return LabelMap(names, 0, "ids")
    # one per line: blank lines inside the file still count (index = line number)
    return LabelMap({i: ln.strip() for i, ln in enumerate(text.splitlines()) if ln.strip()}, 0, "lines")


def _pbtxt(text: str) -> LabelMap:
    names: dict[int, str] = {}
    for item in _ITEM.finditer(text):
        fields = {k: v.strip("\"'") for k, v in _PB_FIELD.findall(item.group(1))}
        if "id" not in fields or not fields["id"].lstrip("-").isdigit():
            raise BadPayload(WHAT, f"label map item without an integer id: {item.group(0)!r:.80}")
        i = int(fields["id"])
        name = fields.get("display_name") or fields.get("name")
        if not name:
            raise BadPayload(WHAT, f"label map item {i} has no name or display_name")
        if i in names:
            raise BadPayload(WHAT, f"label map id {i} is named twice ({names[i]!r} and {name!r})")
        names[i] = name
    if not names:
        raise BadPayload(WHAT, f"starts like a protobuf label map but holds no 'item {{ name id }}': {text[:60]!r}")
    return LabelMap(names, 1 if 0 not in names else 0, "pbtxt")
