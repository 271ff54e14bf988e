"""Datasets: image-caption folders (scan, captions, buckets), the decoded-pixel cache and the emoji dataset builder.

Beside models: imports the low layer only; training, evaluation and the CLI import it. Kept free of imports here so
that `latentdiff.data.config` loads without torch."""
