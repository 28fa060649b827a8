"""The library's exceptions: one base class, one subclass per area, each message naming the problem and the fix.

Every error a user can cause (a bad config value, an unusable dataset or backbone, damaged soft labels, a run
whose loss became NaN, ...) is an :class:`HfScddError`, so an application can catch them all at once. The base
class is a ``ValueError`` because each of them means "this input cannot be used as given".

Each message is one line that names the problem, the file or value involved, and the fix: the command line
(:mod:`hf_scdd.cli`) prints exactly that line, without a traceback (``HF_SCDD_DEBUG=1`` shows it), and exits
with :attr:`HfScddError.exit_code`: 2 for usage errors (a config value or flag), 1 for the others.
"""

from __future__ import annotations


class HfScddError(ValueError):
    """Base class of every hf_scdd error."""

    exit_code = 1
    """The command line's exit status for this error (2 = usage error, as argparse uses)."""


class ConfigError(HfScddError):
    """A config value is invalid or conflicts with existing output; the message names the fix."""

    exit_code = 2


class DataError(HfScddError):
    """A dataset cannot be used as given; the message names the problem and the fix."""


class BackboneError(HfScddError):
    """A backbone cannot be built or loaded as requested; the message says why and what to do."""


class BNStatsError(HfScddError):
    """The model cannot be used for BN matching (no BatchNorm2d layer, or BN layers in training mode)."""


class SqueezeError(HfScddError):
    """A squeeze/probe setting cannot work; the message names the fix."""


class DistilledSetError(HfScddError):
    """A folder or repo is not a readable distilled set; the message says what is missing."""


class SoftLabelError(HfScddError):
    """Soft labels are missing, damaged or belong to another set; the message names the problem and the fix."""


class NonFiniteError(HfScddError):
    """A loss (or the values it produced) became NaN or infinite: the run stopped, wrote no finished output and
    removed what it had started, so the corrected command can run in the same folder; the message names the
    likely cause and the fix."""
