"""Neural building blocks: selective scan, Mamba, BiMamba and S4."""
