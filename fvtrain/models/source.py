"""Where a model comes from: recorded in every artifact manifest (its own module so that the
wrapper and the loader both use it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelSource:
    """Where a model comes from, recorded in every artifact manifest."""

    name: str
    kind: str  # "embedded" | "gguf" | "dir" | "hub"
    path: str | None = None
    revision: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model_id": self.name, "kind": self.kind, "path": self.path, "revision": self.revision}
