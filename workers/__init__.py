"""The task side: TaskWorker actors and the pretext/segmentation tasks they train."""
