"""Image-mean vs local-mean fill of a deleted region, on phantom lesions (docs/outputs.md).

For every ground-truth lesion mask of a small phantom cohort (support devices left
out), the bundled model's calibrated probability of that label on the image, with the
mask replaced by the image's mean and with it filled from around
(:func:`overread.explain.trust.local_mean_fill`). Prints one JSON object per mask.

    python scripts/compare_deletion_fill.py [--n 8] [--seed 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from overread.explain.trust import local_mean_fill
from overread.imaging import read
from overread.inference import Pipeline
from overread.phantom import generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    pipeline = Pipeline.from_name("cxr-default")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_cohort(root, n=args.n, seed=args.seed, rows=256, cols=256)
        truth = json.loads((root / "ground_truth.json").read_text())
        for entry in truth["images"]:
            image = read(root / entry["path"])
            x, _ = pipeline.preprocess(image)
            box = pipeline.letterbox(image)
            assert box is not None
            before = pipeline.predict_batch(x[None])[0]
            for finding in entry["findings"]:
                label = finding["label"]
                if label == "Support Devices" or label not in pipeline.labels:
                    continue
                index = pipeline.labels.index(label)
                mask = PILImage.open(root / finding["mask"]).convert("L")
                resized = np.asarray(mask.resize((box.new_cols, box.new_rows))) > 127
                region = np.zeros(x.shape[-2:], dtype=bool)
                region[box.top : box.top + box.new_rows, box.left : box.left + box.new_cols] = (
                    resized
                )
                image_mean = np.where(region, x.mean(axis=(-2, -1), keepdims=True), x)
                after = pipeline.predict_batch(np.stack([image_mean, local_mean_fill(x, region)]))
                print(
                    json.dumps(
                        {
                            "image": entry["path"],
                            "label": label,
                            "probability": round(float(before[index]), 3),
                            "image_mean_fill": round(float(after[0, index]), 3),
                            "local_mean_fill": round(float(after[1, index]), 3),
                        }
                    )
                )


if __name__ == "__main__":
    main()
