"""What the stages share: BN statistics hooks, kornia augmentation, the Accelerate training loop."""
