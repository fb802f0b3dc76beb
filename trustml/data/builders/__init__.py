"""The project's own TFDS builders for sets TFDS lacks: SNIPS, HateXplain, BOLD.

Importing this package registers the builders with TFDS under the names ``snips``
(configs ``full``/``small``), ``hatexplain`` and ``bold``. Each downloads from its public
source (pinned GitHub commits) or reads a local copy given as ``manual_dir``; build with
:func:`common.prepare` and read with :func:`common.read_split` (ArrayRecord, no TensorFlow).
"""

from trustml.data.builders import bold, common, hatexplain, snips
from trustml.data.builders.bold import Bold
from trustml.data.builders.hatexplain import Hatexplain
from trustml.data.builders.snips import Snips

__all__ = ["Bold", "Hatexplain", "Snips", "bold", "common", "hatexplain", "snips"]
