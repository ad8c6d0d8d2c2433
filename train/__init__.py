"""Training a small GPT with lowprec_jax recipes (``python -m train``)."""
