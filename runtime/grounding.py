"""Text-prompted grounding with a vglaw bundle: tokenizer + text graph + vision graph + prompt cache.

An inspection line asks the same few questions of every frame ("the largest stain", "the crack near the
left edge"), so the text graph's outputs are cached per prompt (keyed by token ids: case and spacing do not
miss the cache) and each frame costs one vision-graph run per prompt — all prompts of a frame in one batch.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError, check_finite_output
from edgestack.models.vglaw.tokenizer import Prompt, encode, load_tokenizer
from edgestack.runtime.engine import Engine, load
from edgestack.runtime.images import ImageLike, read_image, to_tensor

log = logging.getLogger("edgestack.grounding")


@dataclass
class Grounding:
    text: str
    box: list[float]  # x1, y1, x2, y2 in the image's own pixels
    mask: np.ndarray  # bool HxW at the image's own size
    probability: np.ndarray  # float HxW
    warnings: list[str] = field(default_factory=list)
    cached_prompt: bool = False

    def as_dict(self) -> dict:
        return {"text": self.text, "box": self.box, "mask_area_px": int(self.mask.sum()), "warnings": self.warnings,
                "cached_prompt": self.cached_prompt}


class Grounder:
    """`Grounder(bundle)(image, "the long scratch near the top left")` -> Grounding."""

    def __init__(self, bundle: str | Path, backend: str = "auto", cache_size: int = 256):
        meta = bundle_format.read_meta(bundle, verify=True)  # first: it says what a bundle is when given another type
        self.bundle = Path(bundle)
        if meta["model"].get("task") != "grounding":
            raise EdgestackError(f"{self.bundle} is a {meta['model'].get('task')} bundle, not a grounding one; "
                                 "export one with `edgestack export vglaw`")
        if "graphs" not in meta:
            raise EdgestackError(f"{self.bundle} is one graph of a grounding bundle; pass the bundle folder that "
                                 f"holds it, {self.bundle.parent}")
        self.meta = meta
        self.tokenizer = load_tokenizer(self.bundle / "tokenizer.json")
        self.text_engine: Engine = load(self.bundle / meta["graphs"]["text"]["folder"], backend)
        self.vision_engine: Engine = load(self.bundle / meta["graphs"]["vision"]["folder"], backend)
        self.size = tuple(meta["default_size"])
        self.threshold = float(meta["postprocess"]["mask_threshold"])
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_lock = threading.Lock()  # one Grounder, many threads: an entry evicted between look and read
        self.cache_hits = self.cache_misses = 0

    @property
    def description(self) -> str:
        return f"{self.meta['model']['config']}: text {self.text_engine.description}, vision " \
               f"{self.vision_engine.description}"

    def encode(self, text: str) -> tuple[Prompt, np.ndarray, np.ndarray, bool]:
        """(prompt, phi, text feature, from cache) — runs the text graph only for a prompt not seen lately."""
        prompt = encode(self.tokenizer, text)
        key = prompt.ids.tobytes()
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return prompt, *entry, True
            self.cache_misses += 1
        for warning in prompt.warnings:  # once per prompt the text graph reads, not on every frame that asks it
            log.warning("prompt %r: %s", text, warning)
        out = self.text_engine(prompt.ids[None], prompt.attention_mask[None])  # outside the lock: it takes time
        entry = (out["phi"], out["text_feature"])
        for array in entry:  # before the cache keeps it for every later frame
            check_finite_output(array, f"the text graph's output for {text!r}")
        with self._cache_lock:
            self._cache[key] = entry
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return prompt, *entry, False

    def preprocess(self, image: ImageLike, gray_to_rgb: bool = False,
                   bit_depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image, model input at the graph's size); `bit_depth`: of a 16-bit camera image, as read_image."""
        rgb = read_image(image, gray_to_rgb=gray_to_rgb, bit_depth=bit_depth)
        height, width = self.size
        resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        return rgb, to_tensor(resized, self.meta["preprocess"])

    def ground(self, image: ImageLike, texts: str | list[str], gray_to_rgb: bool = False,
               bit_depth: int | None = None) -> list[Grounding]:
        """One Grounding per prompt, all prompts of the image in one vision batch (`bit_depth`: as read_image).

        A prompt that cannot be encoded raises EdgestackError before anything runs, naming that prompt."""
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, (list, tuple)):
            raise EdgestackError(f"prompts must be a string or a list of strings, got {type(texts).__name__}")
        if not texts:
            raise EdgestackError("no prompt given; pass at least one --text")
        most = self.vision_engine.axes["batch"]["max"]
        if len(texts) > most:  # one vision batch holds every prompt of the image
            raise EdgestackError(f"{len(texts)} prompts for one image; this bundle takes at most {most} at once: "
                                 "ground the rest in another call")
        encoded = []
        for i, text in enumerate(texts):
            try:
                encoded.append(self.encode(text))
            except EdgestackError as exc:  # of its type: a NaN output stays the engine's fault
                raise type(exc)(f"prompt {i + 1} of {len(texts)}: {exc}") from None
        rgb, x = self.preprocess(image, gray_to_rgb, bit_depth)
        count = len(texts)
        out = self.vision_engine(np.repeat(x, count, axis=0), np.concatenate([e[1] for e in encoded]),
                                 np.concatenate([e[2] for e in encoded]))
        for key in ("box", "mask"):  # a NaN mask is no mask at all and a NaN box is no box: not a found region
            check_finite_output(out[key], f"the vision graph's {key}")
        height, width = rgb.shape[:2]
        scale = np.array([width / self.size[1], height / self.size[0]] * 2, np.float32)
        results = []
        for i, (prompt, _, _, cached) in enumerate(encoded):
            box = (out["box"][i] * scale).clip(0, [width, height, width, height])
            probability = cv2.resize(out["mask"][i, 0], (width, height), interpolation=cv2.INTER_LINEAR)
            results.append(Grounding(texts[i], [round(float(v), 1) for v in box], probability >= self.threshold,
                                     probability, prompt.warnings, cached))
        return results

    __call__ = ground


def draw_grounding(rgb: np.ndarray, results: list[Grounding]) -> np.ndarray:
    """The image with each prompt's mask tinted and box drawn, labelled with its text."""
    colors = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 100, 255)]
    shown = rgb.copy()
    scale = max(0.4, min(rgb.shape[:2]) / 600)
    for i, result in enumerate(results):
        color = np.array(colors[i % len(colors)], np.float32)
        shown[result.mask] = (0.5 * shown[result.mask] + 0.5 * color).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in result.box)
        cv2.rectangle(shown, (x1, y1), (x2, y2), tuple(int(c) for c in color), max(1, int(2 * scale)))
        cv2.putText(shown, result.text[:60], (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                    tuple(int(c) for c in color), max(1, int(scale)), cv2.LINE_AA)
    return shown
