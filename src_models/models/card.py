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
_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"  # src_models/weights/
BUILTIN_DIRS = {"default": _WEIGHTS / "default", "tumour": _WEIGHTS / "tumour"}
CARD_VERSION = 1
DEFAULT_STEPS = 50  # a card that does not say: DDIM levels ...
DEFAULT_OMEGA = 3.0  # ... and the guidance weight ω (scale ω + 1, as the release samples)


def installed_builtins() -> list[str]:
    """The built-in model names whose weights are installed (a ``card.json`` in their directory)."""
    return [name for name, folder in BUILTIN_DIRS.items() if (folder / CARD_FILE).is_file()]


class ModelError(DiffInfiniteError, ValueError):
    """A model directory, card or weights file that cannot be used (message says why)."""


MAX_CARD_BYTES = 16 * 2**20
MAX_CLASSES = 255  # labels are uint8
MAX_FACTOR = 64  # pixels per latent pixel
MAX_LATENT_CHANNELS = 64
MAX_PATCH = 1024  # latent px


def _number(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(card: "ModelCard") -> None:
    """Types and ranges, field by field."""
    name = card.name if isinstance(card.name, str) else "?"

    def bad(field: str, value, want: str) -> ModelError:
        text = repr(value)
        return ModelError(f"model card {name!r}: {field} is {text if len(text) <= 60 else text[:57] + '...'}, "
                          f"expected {want}")

    if not isinstance(card.name, str) or not card.name or len(card.name) > 200:
        raise bad("name", card.name, "a name of 1 to 200 characters")
    if (not isinstance(card.classes, list) or not 2 <= len(card.classes) <= MAX_CLASSES
            or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in card.classes)):
        raise bad("classes", card.classes, f"a list of 2 to {MAX_CLASSES} class names")
    if not isinstance(card.colours, list) or not all(isinstance(c, str) for c in card.colours):
        raise bad("colours", card.colours, "a list of '#rrggbb' colours")
    from src_models.io.colours import hex_rgb

    for i, c in enumerate(card.colours):
        try:
            hex_rgb(c)
        except Exception:  # noqa: BLE001 - any parse failure is the same mistake
            raise bad(f"colours[{i}]", c, "a colour like '#rrggbb'") from None
    for field in ("unet", "codec"):
        value = getattr(card, field)
        if not isinstance(value, dict):
            raise bad(field, value, "an object")
    for field in ("unet", "mask_model"):
        value = getattr(card, field)
        if value is None and field == "mask_model":
            continue
        if not isinstance(value, dict) or not isinstance(value.get("arch"), str) or not isinstance(value.get("config", {}), dict):
            raise bad(field, value, "an object with an 'arch' name and a 'config' object")
    layout = (card.mask_model or {}) if (card.mask_model or {}).get("kind") == "onehot-layout" else {}
    n = len(card.classes) if isinstance(card.classes, list) else 0
    for key in ("classes", "off_class"):
        if key not in layout:
            continue
        values = layout[key] if key == "classes" else [layout[key]]
        if not isinstance(values, list) or not values or not all(_whole(v) and 0 < v < n for v in values):
            raise bad(f"mask_model.{key}", layout[key], f"class indices from 1 to {n - 1}")
    if layout.get("off_class") in (layout.get("classes") or []):
        raise bad("mask_model.off_class", layout["off_class"], "a class without a channel of its own")
    if "steps" in layout and not (_whole(layout["steps"]) and 1 <= layout["steps"] <= 1000):
        raise bad("mask_model.steps", layout["steps"], "a whole number from 1 to 1000")
    if "solver" in layout or "eta" in layout:
        from src_models.sampling.solvers import SOLVERS, check_solver

        solver = layout.get("solver", "ddim")
        if solver not in SOLVERS:
            raise bad("mask_model.solver", solver, f"one of {', '.join(SOLVERS)}")
        try:
            check_solver(solver, layout.get("eta"))
        except ValueError as e:
            raise bad("mask_model.eta", layout.get("eta"), str(e)) from None
    codec = card.codec
    if not _whole(codec.get("factor", 1)) or not 1 <= codec.get("factor", 1) <= MAX_FACTOR:
        raise bad("codec.factor", codec.get("factor"), f"a whole number from 1 to {MAX_FACTOR}")
    if not _whole(codec.get("channels", 4)) or not 1 <= codec.get("channels", 4) <= MAX_LATENT_CHANNELS:
        raise bad("codec.channels", codec.get("channels"), f"a whole number from 1 to {MAX_LATENT_CHANNELS}")
    if "scale" in codec and not (_number(codec["scale"]) and codec["scale"] > 0):
        raise bad("codec.scale", codec["scale"], "a positive number")
    lc = (codec.get("config") or {}).get("latent_channels") if isinstance(codec.get("config"), dict) else None
    if lc is not None and (not _whole(lc) or not 1 <= lc <= MAX_LATENT_CHANNELS):
        raise bad("codec.config.latent_channels", lc, f"a whole number from 1 to {MAX_LATENT_CHANNELS}")
    def ints(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from ints(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from ints(x)
        elif _whole(v):
            yield v

    big = [v for v in ints(codec.get("config") or {}) if not -4096 <= v <= 4096]
    if big:
        raise bad("codec.config", big[0], "widths and counts of at most 4096")
    if not _whole(card.patch_size) or not 4 <= card.patch_size <= MAX_PATCH:
        raise bad("patch_size", card.patch_size, f"a whole number from 4 to {MAX_PATCH}")
    if not _whole(card.default_steps) or not 1 <= card.default_steps <= 1000:
        raise bad("default_steps", card.default_steps, "a whole number from 1 to 1000")
    if not _number(card.default_omega) or not 0 <= card.default_omega <= 100:
        raise bad("default_omega", card.default_omega, "a number from 0 to 100")
    per_class = card.default_omega_per_class
    if not isinstance(per_class, dict):
        raise bad("default_omega_per_class", per_class, "an object of class index to ω")
    for k, v in per_class.items():
        if not (str(k).isdigit() and 1 <= int(k) < len(card.classes)):
            raise bad("default_omega_per_class key", k, f"a class index from 1 to {len(card.classes) - 1}")
        if not _number(v) or not 0 <= v <= 100:
            raise bad(f"default_omega_per_class {k}", v, "a number from 0 to 100")
    gb = card.default_guidance_below
    if gb is not None and (not _whole(gb) or not 0 <= gb <= 1000):
        raise bad("default_guidance_below", gb, "null or a whole number from 0 to 1000")
    from src_models.sampling.solvers import SOLVERS, check_solver

    if card.default_solver not in SOLVERS:
        raise bad("default_solver", card.default_solver, f"one of {', '.join(SOLVERS)}")
    if card.default_eta is not None:
        try:
            if not _number(card.default_eta) or card.default_eta > 1:
                raise ValueError
            check_solver(card.default_solver, card.default_eta)
        except ValueError:
            raise bad("default_eta", card.default_eta, f"null or a number from 0 to 1 that {card.default_solver} takes") from None
    if card.pixel_size_um is not None and not (_number(card.pixel_size_um) and 0 < card.pixel_size_um < 1000):
        raise bad("pixel_size_um", card.pixel_size_um, "a positive number of µm below 1000, or null")
    if not isinstance(card.extra, dict):
        raise bad("extra", card.extra, "an object")
    _check_guided(card, bad)
    for field in ("training_data", "licence", "description"):
        if not isinstance(getattr(card, field), str):
            raise bad(field, getattr(card, field), "text")


def _check_guided(card, bad) -> None:
    g = card.guided_unet
    if g is None:
        return
    if not isinstance(g, dict):
        raise bad("guided_unet", g, "an object or null")
    name = g.get("file")
    if not (isinstance(name, str) and name.endswith(".safetensors") and "/" not in name and "\\" not in name
            and not name.startswith(".")):
        raise bad("guided_unet.file", name, "a .safetensors file name in the model directory")
    if not isinstance(g.get("by_default", True), bool):
        raise bad("guided_unet.by_default", g.get("by_default"), "true or false")
    if g.get("parts") not in ("cond", "all"):
        raise bad("guided_unet.parts", g.get("parts"), "cond or all")
    if "t_below" in g and not (isinstance(g["t_below"], int) and not isinstance(g["t_below"], bool)
                               and 1 <= g["t_below"] <= 1000):
        raise bad("guided_unet.t_below", g["t_below"], "a whole number of timesteps from 1 to 1000")
    if not _number(g.get("omega")) or not 0 <= g["omega"] <= 100:
        raise bad("guided_unet.omega", g.get("omega"), "a number from 0 to 100")
    per_class = g.get("omega_per_class", {})
    if not isinstance(per_class, dict):
        raise bad("guided_unet.omega_per_class", per_class, "an object of class index to ω")
    for k, v in per_class.items():
        if not (str(k).isdigit() and 1 <= int(k) < len(card.classes)) or not _number(v) or not 0 <= v <= 100:
            raise bad(f"guided_unet.omega_per_class {k}", v, f"ω from 0 to 100 for a class from 1 to {len(card.classes) - 1}")


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
    # ω of single classes where the measurement chose it per class ({"3": 0.0}); default_omega elsewhere
    default_omega_per_class: dict = field(default_factory=dict)
    # the sampler the model's defaults were measured with (benchmarks/sweep_sampling.py); default_steps and
    # default_eta belong to it (None: the solver's own η).  Cards from before it sampled with DDIM.
    default_solver: str = "ddim"
    default_eta: float | None = None
    # classifier-free guidance only at the levels with timestep t below this (of the 1000 training
    # steps); the noisier levels run the conditional pass alone.  None: every level is guided.
    default_guidance_below: int | None = None
    mask_model: dict | None = None  # optional mask diffusion model (same layout as ``unet``)
    pixel_size_um: float | None = None  # µm per image pixel of the training data (None: not stated)
    # a guidance-distilled student of the UNet (src_models/training/distil.py): {"file", "omega",
    # "omega_per_class", "parts", "by_default", ...}; runs at exactly that ω may use it, one pass per window
    # (by default unless "by_default" is false)
    guided_unet: dict | None = None
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
    def omega_per_class(self) -> dict[int, float]:
        """The card's per-class ω, keyed by class index."""
        return {int(k): float(v) for k, v in self.default_omega_per_class.items()}

    @property
    def patch_px(self) -> int:
        return self.patch_size * self.factor

    def validate(self) -> None:
        """Every field checked for type and range before anything is built (a card may come from
        anywhere): one :class:`ModelError` line naming the field."""
        _check_fields(self)
        if len(self.colours) != len(self.classes):
            raise ModelError(f"model card {self.name!r}: {len(self.classes)} classes but {len(self.colours)} colours")
        if self.num_classes < 2:
            raise ModelError(f"model card {self.name!r}: needs class 0 (unknown) and at least one tissue class")
        if self.conditioning not in ("label_map", "per_class"):
            raise ModelError(f"model card {self.name!r}: unknown conditioning {self.conditioning!r}")
        if self.patch_size < 4:
            raise ModelError(f"model card {self.name!r}: patch_size {self.patch_size} is too small")
        if self.pixel_size_um is not None and not (_number(self.pixel_size_um) and 0 < float(self.pixel_size_um) < 1000):
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
            if path.stat().st_size > MAX_CARD_BYTES:
                raise ModelError(f"{path} is larger than {MAX_CARD_BYTES >> 20} MiB; a model card is a small JSON file")
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"no {CARD_FILE} in {directory}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{path} is not valid JSON: {e}") from None
        except RecursionError:
            raise ModelError(f"{path} is nested too deeply to be a model card") from None
        except ValueError as e:  # e.g. a number of more digits than Python converts
            raise ModelError(f"{path} is not usable JSON ({str(e).splitlines()[0][:80]})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path} does not hold a JSON object")
        return cls.from_dict(data)
