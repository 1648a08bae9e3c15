"""Data hygiene after LLaVA-NeXT's recipe: filter image-caption pairs by contrastive similarity (filter.py),
augment training images (augment.py), remove duplicate images and conversations (dedup.py)."""
