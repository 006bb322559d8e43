"""Image sources: the synthetic-scenes generator, readers of data sets on disk, splits, batches."""
from ps_trainer.data.base import (IGNORE_INDEX, Concat, Sample, SegmentationDataset, Subset,
                                  UnreadableImage)
from ps_trainer.data.splits import Splits, build_splits, num_classes_of

__all__ = ["IGNORE_INDEX", "Concat", "Sample", "SegmentationDataset", "Splits", "Subset",
           "UnreadableImage", "build_splits", "num_classes_of"]
