"""Optional integrations with training frameworks (`pip install ckptfs[hf]`)."""
