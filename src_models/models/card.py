"""The model card: everything a user and the sampler need to know about a model, stored as
``card.json`` beside the model's safetensors weights.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from src_models.errors import DiffInfiniteError

CARD_FILE = "card.json"
# built-in model directories shipped inside the package (name -> directory)
BUILTIN_DIRS = {"default": Path(__file__).resolve().parents[1] / "weights" / "default"}  # src_models/weights/
CARD_VERSION = 1
DEFAULT_STEPS = 50  # a card that does not say: DDIM levels ...
DEFAULT_OMEGA = 3.0  # ... and the guidance weight ω (scale ω + 1, as the release samples)


class ModelError(DiffInfiniteError, ValueError):
    """A model directory, card or weights file that cannot be used (message says why)."""


@dataclass
class ModelCard:
    name: str
    classes: list[str]  # class names, index = label; class 0 is "unknown" (the null condition)
    colours: list[str]  # "#rrggbb" per class, used for Labels layers and legends
    conditioning: str  # "label_map" (one guided pass per window) or "per_class" (one per label)
    unet: dict  # {"arch": registry name, "config": kwargs}
    codec: dict  # {"type": "native"|"identity"|"sd2", "factor": f, "channels": c, "scale": s, ...}
    patch_size: int  # denoising window side, in latent pixels
    training_data: str = ""
    licence: str = ""
    description: str = ""
    default_steps: int = DEFAULT_STEPS
    default_omega: float = DEFAULT_OMEGA
    mask_model: dict | None = None  # optional mask diffusion model (same layout as ``unet``)
    pixel_size_um: float | None = None  # µm per image pixel of the training data (None: not stated)
    extra: dict = field(default_factory=dict)
    version: int = CARD_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def factor(self) -> int:
        """Pixels per latent pixel."""
        return int(self.codec.get("factor", 1))

    @property
    def patch_px(self) -> int:
        return self.patch_size * self.factor

    def validate(self) -> None:
        if len(self.colours) != len(self.classes):
            raise ModelError(f"model card {self.name!r}: {len(self.classes)} classes but {len(self.colours)} colours")
        if self.num_classes < 2:
            raise ModelError(f"model card {self.name!r}: needs class 0 (unknown) and at least one tissue class")
        if self.conditioning not in ("label_map", "per_class"):
            raise ModelError(f"model card {self.name!r}: unknown conditioning {self.conditioning!r}")
        if self.patch_size < 4:
            raise ModelError(f"model card {self.name!r}: patch_size {self.patch_size} is too small")
        if self.pixel_size_um is not None and not (0 < float(self.pixel_size_um) < 1000):
            raise ModelError(f"model card {self.name!r}: pixel_size_um must be a positive number of µm")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"model card has unknown fields: {sorted(unknown)}")
        try:
            card = cls(**d)
        except TypeError as e:
            raise ModelError(f"model card is incomplete: {e}") from None
        card.validate()
        return card

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ModelCard":
        path = Path(directory) / CARD_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"no {CARD_FILE} in {directory}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path} does not hold a JSON object")
        return cls.from_dict(data)
