"""OIALR inside the trainers people use: ``oialr.integrations.transformers.OIALRCallback`` for
Hugging Face's ``Trainer`` and ``oialr.integrations.lightning.OIALRCallback`` for Lightning.
Each module imports its framework only when you import it."""
