"""medim: federated, privacy-preserving training of MeDiM (discrete diffusion on a bidirectional MLLM)."""

__version__ = "0.1.0"
