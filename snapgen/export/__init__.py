"""Export of trained (or preset) SnapGen models for deployment: Core ML packages."""
