"""Scoring trained encoders: the challenge score, the challenge submission, and whether the attention is faithful.

challenge     a run's test predictions against a reference (the virtual subject's truth or measured
              test fMRI): r, within-ROI r and the noise-normalised challenge score (tbe score)
submission    the challenge's submission folder and zip, from runs of several subjects (tbe submit)
faithfulness  does a query's prediction use what its attention selects (the token-deletion tests)

The metrics themselves (r, noise ceiling, ROI summaries) are :mod:`model.metrics`, a
leaf that the simulator, the ensembles and training use too. This package
exports what the rest of the suite uses; the parts are imported from their
modules.
"""
from .challenge import (SCORES, Reference, check_shapes, file_reference, pool_scores, score, score_lines, score_table,
                        virtual_reference)
from .faithfulness import (MIN_RATIO, MIN_SPECIFICITY, SUMMARY_IMAGES, concatenate, deletion_changes, deletion_ratios,
                           describe_faithfulness, faithfulness_summary, query_reliability, run_summary)
from .submission import collect, subject_folder, write_submission

__all__ = ["MIN_RATIO", "MIN_SPECIFICITY", "SCORES", "SUMMARY_IMAGES", "Reference", "check_shapes", "collect",
           "concatenate", "deletion_changes", "deletion_ratios", "describe_faithfulness", "faithfulness_summary",
           "file_reference", "pool_scores", "query_reliability", "run_summary", "score", "score_lines", "score_table", "subject_folder", "virtual_reference", "write_submission"]
