"""The side-by-side benchmark against diffusers (`latentdiff bench`): harness.py measures, benchmarks/make_table.py
(source checkout) turns raw JSON into BENCHMARKS.md."""
