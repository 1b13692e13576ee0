"""What a result says about the model that made it: its model card, in brief.

A report a reader sees (the PDF report) names the model and states what it is for;
the package's manifest holds the intended use, and the package's ``MODEL_CARD.md``
(written by training) its own "Intended use" section. :class:`ModelCardSummary`
keeps those few lines, and whether the card rules out diagnostic use, so a report
can say "not for diagnosis" exactly where the package does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overread.models.package import ModelPackage

#: The file training writes beside the manifest.
MODEL_CARD_NAME = "MODEL_CARD.md"

#: Wording by which a card rules out diagnostic or clinical use.
_NOT_FOR_DIAGNOSIS = re.compile(
    r"not\s+for\s+(?:any\s+)?(?:clinical|diagnos\w*)"
    r"|research\s+use\s+only|not\s+for\s+(?:any\s+)?(?:\w+\s+)?interpretation",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ModelCardSummary:
    """The model card's summary for a report.

    Attributes
    ----------
    name, version
        The model package's identity.
    intended_use
        The manifest's intended-use statement.
    card_intended_use
        The "Intended use" section of the package's model card, as plain text
        (``""`` when the package has no card).
    trained
        ``False`` for an untrained placeholder.
    not_for_diagnosis
        Whether the card (or the manifest, or the package being untrained) rules out
        diagnostic use: a report then says "not for diagnosis".
    """

    name: str
    version: str
    intended_use: str
    card_intended_use: str = ""
    trained: bool = True
    not_for_diagnosis: bool = False

    @classmethod
    def of(
        cls,
        name: str,
        version: str,
        intended_use: str,
        card_text: str = "",
        *,
        trained: bool = True,
    ) -> ModelCardSummary:
        """The summary of a model from its manifest's statement and its card's text."""
        section = intended_use_section(card_text)
        statements = f"{intended_use}\n{section}"
        return cls(
            name=name,
            version=version,
            intended_use=intended_use.strip(),
            card_intended_use=section,
            trained=trained,
            not_for_diagnosis=not trained or bool(_NOT_FOR_DIAGNOSIS.search(statements)),
        )

    @classmethod
    def from_package(cls, package: ModelPackage) -> ModelCardSummary:
        """The summary of a loaded package (its manifest and its ``MODEL_CARD.md``)."""
        card = package.path / MODEL_CARD_NAME
        try:
            text = card.read_text(encoding="utf-8")
        except OSError:
            text = ""
        manifest = package.manifest
        return cls.of(
            manifest.name,
            manifest.version,
            manifest.intended_use,
            text,
            trained=manifest.trained,
        )

    @property
    def statement(self) -> str:
        """The intended use to print: the manifest's, then what the card's section adds."""
        extra = [p for p in self.card_intended_use.split("\n\n") if p and p != self.intended_use]
        return " ".join([self.intended_use, *extra]).strip()


def intended_use_section(markdown: str) -> str:
    """The text of a model card's "Intended use" section, Markdown emphasis removed.

    Paragraphs are joined by a blank line; the same sentence twice (the manifest's
    statement repeated by the card) is kept once.
    """
    lines = markdown.splitlines()
    body: list[str] = []
    inside = False
    for line in lines:
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            if inside:
                break
            inside = heading.group(1).strip().lower() == "intended use"
            continue
        if inside:
            body.append(line)
    paragraphs = [
        " ".join(part.split()) for part in re.split(r"\n\s*\n", "\n".join(body)) if part.strip()
    ]
    plain = [re.sub(r"(\*\*|__|`)", "", p) for p in paragraphs]
    return "\n\n".join(dict.fromkeys(plain))


__all__ = ["MODEL_CARD_NAME", "ModelCardSummary", "intended_use_section"]
