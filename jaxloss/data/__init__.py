"""Data: embedded and tfds datasets, the user's own data (by path or from arrays), long-tail and label-noise transforms, batching, augmentation,
and the per-host streaming input pipeline (random-access sources read by Grain).

Import it explicitly (``import jaxloss.data``); ``import jaxloss`` does not load it.
"""

from jaxloss.data._augment import normalize as normalize
from jaxloss.data._augment import random_crop as random_crop
from jaxloss.data._augment import random_flip as random_flip
from jaxloss.data._batching import steps_per_epoch as steps_per_epoch
from jaxloss.data._constants import CIFAR10_MEAN as CIFAR10_MEAN
from jaxloss.data._constants import CIFAR10_STD as CIFAR10_STD
from jaxloss.data._constants import CIFAR100_MEAN as CIFAR100_MEAN
from jaxloss.data._constants import CIFAR100_STD as CIFAR100_STD
from jaxloss.data._dataset import Dataset as Dataset
from jaxloss.data._dataset import class_counts as class_counts
from jaxloss.data._load import available_datasets as available_datasets
from jaxloss.data._load import load as load
from jaxloss.data._load import load_source as load_source
from jaxloss.data._load import load_splits as load_splits
from jaxloss.data._load import provenance as provenance
from jaxloss.data._own import ImageFolderSource as ImageFolderSource
from jaxloss.data._own import check_splits as check_splits
from jaxloss.data._own import fingerprint as fingerprint
from jaxloss.data._own import from_arrays as from_arrays
from jaxloss.data._own import open_path as open_path
from jaxloss.data._pipeline import BatchIterator as BatchIterator
from jaxloss.data._pipeline import eval_batches as eval_batches
from jaxloss.data._pipeline import global_batch as global_batch
from jaxloss.data._pipeline import train_batches as train_batches
from jaxloss.data._sources import ArrayRecordSource as ArrayRecordSource
from jaxloss.data._sources import ArraySource as ArraySource
from jaxloss.data._sources import InMemorySource as InMemorySource
from jaxloss.data._sources import Normalization as Normalization
from jaxloss.data._sources import Source as Source
from jaxloss.data._sources import SourceFacts as SourceFacts
from jaxloss.data._sources import TfdsSource as TfdsSource
from jaxloss.data._sources import check_labels as check_labels
from jaxloss.data._sources import read_schema as read_schema
from jaxloss.data._sources import view as view
from jaxloss.data._sources import write_array_record as write_array_record
from jaxloss.data._synthetic import teacher_dataset as teacher_dataset
from jaxloss.data._transforms import long_tailed as long_tailed
from jaxloss.data._transforms import long_tailed_counts as long_tailed_counts
from jaxloss.data._transforms import with_label_noise as with_label_noise
