"""Using a finished run's K fold models on images: the soft-vote ensemble, uploads, and Grad-CAM heatmaps."""
